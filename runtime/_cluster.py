"""``Cluster``: the user's handle on a set of silos, and the client that calls into them.

``Cluster.local`` runs N silos in this process over an in-process transport (the embedded
default: no server to set up). ``Cluster.ray`` runs silos as Ray actors. Either way the cluster
is an async context manager, ``get`` returns actor references, and ``aclose`` deactivates every
activation.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterable
from typing import Any, TypeVar, cast

from actors import (
    Actor,
    ActorId,
    ActorKey,
    ActorRef,
    ClusterClosedError,
    ConfigurationError,
)
from runtime._caller import Caller, CallSettings
from runtime._clock import Clock, SystemClock
from runtime._membership import Membership, SiloStatus
from runtime._registry import ActorRegistry
from runtime._silo import Silo, SiloOptions
from runtime._transport import LocalTransport
from storage import StorageProvider, open_storage

__all__ = ["Cluster"]

A = TypeVar("A", bound=Actor[Any])


class Cluster:
    """A running raygrain cluster as seen by a client. Build one with ``Cluster.local`` or
    ``Cluster.ray`` and use it as ``async with``."""

    def __init__(
        self,
        registry: ActorRegistry,
        caller: Caller,
        storage: StorageProvider,
        silos: list[Silo],
        owns_storage: bool,
    ) -> None:
        self._registry = registry
        self._caller = caller
        self.storage = storage
        self.silos = silos
        self._owns_storage = owns_storage
        self._started = False
        self.closed = False

    @classmethod
    def local(
        cls,
        actors: Iterable[type[Actor[Any]]],
        *,
        silos: int = 2,
        storage: StorageProvider | str = "memory://",
        clock: Clock | None = None,
        default_timeout: float = 30.0,
        default_idle_timeout: float = 15 * 60.0,
        collection_period: float = 60.0,
        max_message_bytes: int = 16 * 1024 * 1024,
        deactivation_timeout: float = 30.0,
    ) -> Cluster:
        """``silos`` in-process silos sharing ``storage`` (a provider or a URL such as
        ``"sqlite:///app.db"``; default ``"memory://"``). Start it with ``async with``."""
        if not isinstance(silos, int) or silos < 1:
            raise ConfigurationError(f"silos must be a positive int, got {silos!r}")
        if default_timeout <= 0:
            raise ConfigurationError("default_timeout must be positive")
        registry = ActorRegistry(actors)
        owns_storage = isinstance(storage, str)
        provider = open_storage(storage)
        transport = LocalTransport()
        membership = Membership()
        settings = CallSettings(default_timeout, max_message_bytes)
        options = SiloOptions(
            default_idle_timeout, collection_period, deactivation_timeout, settings
        )
        the_clock = clock or SystemClock()
        silo_list = []
        for index in range(silos):
            silo = Silo(
                f"silo-{index}", registry, provider, transport, membership, the_clock, options
            )
            transport.register(silo.name, silo)
            silo_list.append(silo)
        caller = Caller(f"client-{uuid.uuid4().hex[:8]}", transport, membership, registry, settings)
        transport.register(caller.address, caller)
        cluster = cls(registry, caller, provider, silo_list, owns_storage)
        cluster._membership = membership
        return cluster

    _membership: Membership

    async def start(self) -> Cluster:
        if self._started:
            return self
        self._started = True
        for silo in self.silos:
            silo.start()
            self._membership.set_status(silo.name, SiloStatus.ACTIVE)
        return self

    async def __aenter__(self) -> Cluster:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Deactivate every activation (state is already durable) and stop the silos."""
        if self.closed:
            return
        self.closed = True
        self._caller.close()
        for silo in self.silos:
            self._membership.set_status(silo.name, SiloStatus.SHUTTING_DOWN)
        for silo in self.silos:
            await silo.aclose()
        if self._owns_storage:
            await self.storage.aclose()

    def get(self, actor_type: type[A], key: ActorKey) -> A:
        """A reference to the actor ``(actor_type, key)``. Nothing is created until a call."""
        if self.closed:
            raise ClusterClosedError("the cluster is closed")
        type_name = self._registry.type_name_of(actor_type)
        return cast(A, ActorRef(ActorId(type_name, key), self._caller))

    def ref(self, type_name: str, key: ActorKey) -> ActorRef:
        """An untyped reference by registered type name."""
        return ActorRef(ActorId(type_name, key), self._caller)

    async def collect_idle(self) -> int:
        """Run one idle collection on every silo now; returns how many were deactivated."""
        return sum([await silo.collect_idle() for silo in self.silos])

    def stats(self) -> list[dict[str, Any]]:
        return [silo.stats() for silo in self.silos]

    def __del__(self) -> None:
        if getattr(self, "_started", False) and not getattr(self, "closed", True):
            warnings.warn(
                "raygrain Cluster was started and never closed: use 'async with' or aclose()",
                ResourceWarning,
                stacklevel=1,
            )
