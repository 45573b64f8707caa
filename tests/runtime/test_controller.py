"""The membership controller on its own (no Ray): what a restart by Ray leaves it knowing."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from raygrain.actors import StorageError
from raygrain.runtime.kernel import SiloStatus, view_from_wire
from raygrain.runtime.membership import (
    ControllerImpl,
    FailureDetection,
    SiloDied,
    membership_record,
)
from raygrain.storage import MemoryStorage, StateWrite

FAST = FailureDetection(probe_period=0.01, probe_timeout=0.05, missed_probes=2)


class _Controller(ControllerImpl):
    """Probes answer for the silos in ``alive``; the others are reported dead, as Ray does."""

    def __init__(self, store: MemoryStorage, alive: set[str], deployment: str = "one") -> None:
        super().__init__(FAST, store, membership_record(deployment))
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


class _Silent(_Controller):
    """Probes of the silos not in ``alive`` go unanswered (a killed node: timeouts, not Ray's
    word), and are counted."""

    def __init__(self, store: MemoryStorage, alive: set[str]) -> None:
        super().__init__(store, alive)
        self.probes: dict[str, int] = {}

    async def probe_silo(self, name: str) -> None:
        self.probes[name] = self.probes.get(name, 0) + 1
        if name not in self.alive:
            await asyncio.sleep(60)


async def test_a_controller_back_from_a_restart_goes_on_from_the_standbys_missed_probes() -> None:
    """A node and the controller's process die together: the standby leads and counts the
    silo's missed probes, then Ray restarts the controller and the standby hands back. The
    restarted controller used to start counting from zero (a whole detection window late); the
    standby's counts now come with the hand-back, and one more miss declares the silo."""
    detection = FailureDetection(probe_period=0.01, probe_timeout=0.05, missed_probes=3)
    store = MemoryStorage()
    first = _Controller(store, {"silo-a", "silo-b"})
    await first.set_status("silo-a", "active")
    await first.set_status("silo-b", "active")
    version = first.view.version
    restarted = _Silent(store, {"silo-a"})
    restarted.detection = detection
    await restarted.resume({"silo-b": 2})  # what the standby saw missed
    view = view_from_wire(await asyncio.wait_for(restarted.wait_view(version, 5.0), 5.0))
    assert view.status_of("silo-b") is SiloStatus.DEAD
    assert restarted.probes["silo-b"] == 1, restarted.probes
    assert first.missed_probes() == {}
    for watcher in [*first._watchers.values(), *restarted._watchers.values()]:
        watcher.cancel()


async def test_the_standby_sees_the_controllers_process_die_without_waiting_for_ray() -> None:
    """A call to a killed actor that Ray restarts waits for the restart (seconds) instead of
    failing; the standby, on the controller's node, watches the process itself."""
    import subprocess
    import sys

    import psutil

    from raygrain.runtime.ray_host._actors import _answer_unless_gone, _ControllerGone

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        probe = asyncio.ensure_future(_answer_unless_gone(never, psutil.Process(child.pid), 120))
        await asyncio.sleep(0.2)
        assert not probe.done()  # alive and silent: still waiting
        child.kill()
        child.wait()
        try:
            await asyncio.wait_for(probe, 30)
            raise AssertionError("the probe answered")
        except _ControllerGone:
            pass
        assert never.cancelled()  # the call is not left waiting
    finally:
        child.kill()
        child.wait()


async def test_two_deployments_on_one_store_keep_views_of_their_own() -> None:
    # Two deployments launched from one directory share its default state file: each keeps
    # its own view there (one record each). With one record, the second one's controller took
    # the first one's view, declared its live silo dead, and their writes fenced each other.
    store = MemoryStorage()
    first = _Controller(store, {"a-silo"}, "a")
    await first.set_status("a-silo", "active")
    second = _Controller(store, {"b-silo"}, "b")
    await second.set_status("b-silo", "active")
    assert second.view.active() == ["b-silo"]
    await asyncio.sleep(FAST.probe_period * 10)  # (probes run: nothing of a's is b's)
    assert first.view.active() == ["a-silo"] and second.view.active() == ["b-silo"]
    restarted = _Controller(store, {"a-silo"}, "a")  # a's controller, restarted by Ray
    view = view_from_wire(await restarted.wait_view(0, 1.0))
    assert view.active() == ["a-silo"] and view.version == first.view.version
    for watcher in [
        *first._watchers.values(),
        *second._watchers.values(),
        *restarted._watchers.values(),
    ]:
        watcher.cancel()
