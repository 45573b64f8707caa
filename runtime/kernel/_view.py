"""The membership view: which silos are live, as a versioned value, and the ring built from it.

The kernel routes by the view; the membership room (``runtime.membership``) decides it.

Every silo and client routes by the ring of the newest view it knows. In local mode all of them
share one ``Membership`` object; across processes the view is pushed to each of them.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass

import msgpack

from raygrain.runtime.kernel._ring import DEFAULT_VIRTUAL_NODES, ConsistentHashRing

__all__ = ["Membership", "MembershipView", "SiloStatus", "view_from_wire", "view_to_wire"]


class SiloStatus(enum.Enum):
    JOINING = "joining"
    ACTIVE = "active"
    SHUTTING_DOWN = "shutting_down"
    DEAD = "dead"


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
        self._listeners: list[Callable[[MembershipView], None]] = []

    def subscribe(self, listener: Callable[[MembershipView], None]) -> None:
        """Call ``listener(view)`` after every newer view is applied."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[MembershipView], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def update(self, view: MembershipView) -> bool:
        if view.version <= self.view.version:
            return False
        active_before = self.ring.silos
        self.view = view
        if tuple(sorted(view.active())) != active_before:
            self.ring = ConsistentHashRing(view.active(), self._virtual_nodes)
        self._changed.set()
        self._changed = asyncio.Event()
        for listener in list(self._listeners):
            listener(view)
        return True

    def restart(self) -> None:
        """Forget the view and its ring: the cluster was brought up again, and its new
        controller numbers its views from the start (a client following it)."""
        self.view = MembershipView(0)
        self.ring = ConsistentHashRing((), self._virtual_nodes)

    def set_status(self, name: str, status: SiloStatus) -> MembershipView:
        self.update(self.view.with_status(name, status))
        return self.view

    async def wait_for_view(self, version: int) -> MembershipView:
        while self.view.version < version:
            await self._changed.wait()
        return self.view


def view_to_wire(view: MembershipView) -> bytes:
    return msgpack.packb(  # type: ignore[no-any-return]
        [view.version, [[name, status.value] for name, status in view.silos]]
    )


def view_from_wire(blob: bytes) -> MembershipView:
    version, silos = msgpack.unpackb(blob, raw=False)
    return MembershipView(version, tuple((name, SiloStatus(status)) for name, status in silos))
