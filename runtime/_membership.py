"""The membership view: which silos are live, as a versioned value, and the ring built from it.

Every silo and client routes by the ring of the newest view it knows. In local mode all of them
share one ``Membership`` object; across processes the view is pushed to each of them.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass

from raygrain.runtime._ring import DEFAULT_VIRTUAL_NODES, ConsistentHashRing

__all__ = ["FailureDetection", "Membership", "MembershipView", "SiloStatus"]


class SiloStatus(enum.Enum):
    JOINING = "joining"
    ACTIVE = "active"
    SHUTTING_DOWN = "shutting_down"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class FailureDetection:
    """How the controller decides that a silo is dead.

    Every ``probe_period`` seconds each active silo is probed; a probe that is not answered
    within ``probe_timeout`` is missed, and ``missed_probes`` misses in a row declare the silo
    dead (about ``missed_probes * (probe_timeout + probe_period)`` after a crash: 3 s by
    default). Ray's own word that the silo's actor died declares it dead at once. Probes are
    answered on their own thread, so a long CPU-bound turn does not miss them.
    """

    probe_period: float = 0.5
    probe_timeout: float = 1.0
    missed_probes: int = 2


@dataclass(frozen=True, slots=True)
class MembershipView:
    """Version ``version`` of the cluster's silos and their status."""

    version: int
    silos: tuple[tuple[str, SiloStatus], ...] = ()

    def active(self) -> list[str]:
        return [name for name, status in self.silos if status is SiloStatus.ACTIVE]

    def status_of(self, name: str) -> SiloStatus | None:
        return next((status for n, status in self.silos if n == name), None)

    def dead(self) -> list[str]:
        return [name for name, status in self.silos if status is SiloStatus.DEAD]

    def with_status(self, name: str, status: SiloStatus) -> MembershipView:
        others = tuple((n, s) for n, s in self.silos if n != name)
        return MembershipView(self.version + 1, (*others, (name, status)))


class Membership:
    """The newest known view and its ring; ``update`` ignores views older than the current."""

    def __init__(self, virtual_nodes: int = DEFAULT_VIRTUAL_NODES) -> None:
        self._virtual_nodes = virtual_nodes
        self.view = MembershipView(0)
        self.ring = ConsistentHashRing((), virtual_nodes)
        self._changed = asyncio.Event()

    def update(self, view: MembershipView) -> bool:
        if view.version <= self.view.version:
            return False
        active_before = self.ring.silos
        self.view = view
        if tuple(sorted(view.active())) != active_before:
            self.ring = ConsistentHashRing(view.active(), self._virtual_nodes)
        self._changed.set()
        self._changed = asyncio.Event()
        return True

    def set_status(self, name: str, status: SiloStatus) -> MembershipView:
        self.update(self.view.with_status(name, status))
        return self.view

    async def wait_for_view(self, version: int) -> MembershipView:
        while self.view.version < version:
            await self._changed.wait()
        return self.view
