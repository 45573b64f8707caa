"""One Ray session for every Ray scenario: started (or joined) once, shut down after."""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["ensure_ray", "shutdown_ray"]

# Ray workers import the benchmark's actor classes by module name: they need this repository.
_REPO = str(Path(__file__).resolve().parent.parent)


def ensure_ray(address: str | None) -> bool:
    """Connect to Ray at ``address`` (None: start a new local one); True if this call did it.

    None means a new local instance even when one started with ``ray start`` is running here:
    Ray's own default would join that one, and a benchmark has no business on someone else's
    cluster (closing a raygrain cluster stops every silo it finds).
    """
    import ray

    if ray.is_initialized():
        return False
    path = os.pathsep.join(dict.fromkeys([_REPO, *(p for p in sys.path if p)]))
    ray.init(
        address=address or "local",
        namespace="raygrain",
        runtime_env={"env_vars": {"PYTHONPATH": path}},
        include_dashboard=False,
        logging_level="warning",
        log_to_driver=False,
    )
    return True


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
