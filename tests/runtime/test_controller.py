"""The membership controller on its own (no Ray): what a restart by Ray leaves it knowing."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from raygrain.actors import StorageError
from raygrain.runtime.kernel import SiloStatus, view_from_wire
from raygrain.runtime.membership import ControllerImpl, FailureDetection, SiloDied
from raygrain.storage import MemoryStorage, StateWrite

FAST = FailureDetection(probe_period=0.01, probe_timeout=0.05, missed_probes=2)


class _Controller(ControllerImpl):
    """Probes answer for the silos in ``alive``; the others are reported dead, as Ray does."""

    def __init__(self, store: MemoryStorage, alive: set[str]) -> None:
        super().__init__(FAST, store)
        self.alive = alive

    async def probe_silo(self, name: str) -> None:
        if name not in self.alive:
            raise SiloDied("gone")


async def test_a_restarted_controller_answers_long_polls_from_the_stored_view() -> None:
    store = MemoryStorage()
    first = _Controller(store, {"silo-a", "silo-b"})
    await first.set_status("silo-a", "active")
    await first.set_status("silo-b", "active")
    version = first.view.version
    # Ray restarts a crashed controller: same store, nothing in memory. The first call it gets
    # is typically a client's or a silo's long poll, asking for anything newer than what it has.
    second = _Controller(store, {"silo-a"})
    view = view_from_wire(await second.wait_view(version - 1, 1.0))
    assert view.version == version
    assert sorted(view.active()) == ["silo-a", "silo-b"]
    # It also takes up probing where the first one left off: silo-b died meanwhile.
    newer = view_from_wire(await asyncio.wait_for(second.wait_view(version, 5.0), 5.0))
    assert newer.status_of("silo-b") is SiloStatus.DEAD
    for watcher in [*first._watchers.values(), *second._watchers.values()]:
        watcher.cancel()


class _FlakyStore(MemoryStorage):
    """Refuses the next ``failures`` writes, as a busy or briefly unreachable store would."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0

    async def write_many(self, writes: Sequence[StateWrite]) -> list[str]:
        if self.failures:
            self.failures -= 1
            raise StorageError("database is locked")
        return await super().write_many(writes)


async def test_a_silo_is_declared_dead_once_the_store_takes_the_view_again() -> None:
    store = _FlakyStore()
    controller = _Controller(store, {"silo-a", "silo-b"})
    await controller.set_status("silo-a", "active")
    await controller.set_status("silo-b", "active")
    store.failures = 3
    controller.alive.discard("silo-b")
    view = view_from_wire(await controller.wait_view(controller.view.version, 5.0))
    assert view.status_of("silo-b") is SiloStatus.DEAD
    assert store.failures == 0
    for watcher in controller._watchers.values():
        watcher.cancel()
