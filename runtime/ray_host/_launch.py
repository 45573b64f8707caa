"""What a deployment on Ray is made of (``RayLaunch``), and where its actors live: the Ray
namespace named after the deployment. Both the launcher and the actors it starts read it."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from raygrain.actors import Actor, ConfigurationError
from raygrain.runtime.membership import FailureDetection
from raygrain.runtime.ray_host._direct import DirectPlane, check_transport
from raygrain.storage import absolute_storage_url, check_storage_url

__all__ = [
    "DEFAULT_DEPLOYMENT",
    "DEFAULT_STORAGE",
    "NAMESPACE_PREFIX",
    "RayLaunch",
    "namespace_of",
]

NAMESPACE_PREFIX = "raygrain-"
DEFAULT_DEPLOYMENT = "default"
DEFAULT_STORAGE = "sqlite:///raygrain-state.db"  # relative: made absolute where launched
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def namespace_of(deployment: str) -> str:
    """The Ray namespace holding the deployment ``deployment``'s actors."""
    if not isinstance(deployment, str) or not _NAME.fullmatch(deployment):
        raise ConfigurationError(
            f"deployment name must be 1-63 letters, digits, '.', '_' or '-' (starting with a "
            f"letter or digit), got {deployment!r}"
        )
    return NAMESPACE_PREFIX + deployment


@dataclass(frozen=True)
class RayLaunch:
    """What to start on Ray: the actor types, silos per node, storage, lifetime, and the
    deployment's name and environment.

    ``runtime_env`` is Ray's (``working_dir``, ``pip``, ``env_vars``...), given to every actor
    of the deployment; ``log_level`` (default: ``RAYGRAIN_LOG_LEVEL`` of this process) reaches
    them as their ``RAYGRAIN_LOG_LEVEL``.
    """

    actor_types: tuple[type[Actor[Any]], ...]
    silos_per_node: int = 1
    storage: str | None = None  # None: the storage server in front of DEFAULT_STORAGE
    server_storage: str = DEFAULT_STORAGE
    detached: bool = False
    detection: FailureDetection = field(default_factory=FailureDetection)
    name: str = DEFAULT_DEPLOYMENT
    runtime_env: dict[str, Any] | None = None
    log_level: str | None = None
    transport: str = "direct"  # "ray": silos listen nowhere, Ray calls carry every message
    plane: DirectPlane = field(default_factory=DirectPlane)  # a fresh secret per launch

    def __post_init__(self) -> None:
        check_transport(self.transport)
        namespace_of(self.name)  # a bad name fails here, before anything starts
        if not isinstance(self.silos_per_node, int) or self.silos_per_node < 1:
            raise ConfigurationError(
                f"silos_per_node must be an int >= 1, got {self.silos_per_node!r}"
            )
        if self.runtime_env is not None and not isinstance(self.runtime_env, dict):
            raise ConfigurationError(
                f"runtime_env must be a dict (Ray's runtime_env), got {self.runtime_env!r}"
            )
        # Checked here, where the cluster is launched: a bad path is one line now, not a
        # failure in every silo at its first call.
        check_storage_url(self.server_storage)
        object.__setattr__(self, "server_storage", absolute_storage_url(self.server_storage))
        if self.storage is not None:
            check_storage_url(self.storage)
            object.__setattr__(self, "storage", absolute_storage_url(self.storage))
        if self.log_level is None:
            object.__setattr__(self, "log_level", os.environ.get("RAYGRAIN_LOG_LEVEL"))

    @property
    def namespace(self) -> str:
        return namespace_of(self.name)

    def actor_runtime_env(self) -> dict[str, Any] | None:
        """The runtime_env of the deployment's actors: the user's, plus the log level."""
        env = dict(self.runtime_env or {})
        if self.log_level:
            env_vars = dict(env.get("env_vars") or {})
            env_vars.setdefault("RAYGRAIN_LOG_LEVEL", self.log_level)
            env["env_vars"] = env_vars
        return env or None
