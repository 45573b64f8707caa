"""Timers, ported from Orleans' TimerOrleansTest / TimerCallGrain tests, on a ManualClock:
exact tick counts, stop, change and cancel from inside a tick, ticks as non-interleaving
turns, no keep-alive by default, a raising tick, a tick's state committed or rolled back."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from raygrain import Actor, InvalidScheduleError, Timer, always_interleave, read_only
from raygrain.runtime import Cluster, ManualClock
from raygrain.runtime.timers import TimeService
from raygrain.storage import MemoryStorage
from tests.runtime.time_helpers import capture_logs, settle, step

LOG: list[str] = []  # what ran, in order
GATE: dict[str, asyncio.Event] = {}


@dataclass
class Ticks:
    count: int = 0
    seen: list[float] = field(default_factory=list)


class Ticker(Actor[Ticks], name="timers.Ticker"):
    def __init__(self) -> None:
        self.timer: Timer | None = None
        self.change_at: tuple[int, float, float | None] | None = None
        self.cancel_at: int | None = None
        self.fail_at: int | None = None
        self.running = 0
        self.most_running = 0

    async def start(
        self,
        period: float,
        first: float | None = None,
        keep_alive: bool = False,
        interleave: bool = False,
    ) -> None:
        self.timer = self.timers.every(
            period,
            self.tick,
            first=first,
            name="ticker",
            keep_alive=keep_alive,
            interleave=interleave,
        )

    async def start_once(self, delay: float) -> None:
        self.timer = self.timers.after(delay, self.tick, name="once")

    async def tick(self) -> None:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            LOG.append("tick-start")
            self.state.count += 1
            self.state.seen.append(self._context.silo.clock.now())  # type: ignore[attr-defined]
            gate = GATE.get("tick")
            if gate is not None:
                await gate.wait()
            assert self.timer is not None
            if self.change_at is not None and self.state.count == self.change_at[0]:
                self.timer.change(self.change_at[1], self.change_at[2])
            if self.cancel_at is not None and self.state.count == self.cancel_at:
                self.timer.cancel()
            if self.fail_at is not None and self.state.count == self.fail_at:
                self.fail_at = None  # (not state: the rollback leaves it)
                raise RuntimeError("tick failed on purpose")
            LOG.append("tick-end")
        finally:
            self.running -= 1

    async def change_inside(self, at: int, due: float, period: float | None) -> None:
        self.change_at = (at, due, period)

    async def cancel_inside(self, at: int) -> None:
        self.cancel_at = at

    async def fail_on(self, at: int) -> None:
        self.fail_at = at

    async def stop(self) -> bool:
        assert self.timer is not None
        self.timer.cancel()
        return self.timer.active

    async def change(self, due: float, period: float | None) -> None:
        assert self.timer is not None
        self.timer.change(due, period)

    async def touch(self) -> None:
        LOG.append("call")

    async def hold(self) -> None:
        LOG.append("call-start")
        await GATE["call"].wait()
        LOG.append("call-end")

    @always_interleave
    async def peek(self) -> int:
        return self.state.count

    @read_only
    async def count(self) -> int:
        return self.state.count

    @read_only
    async def times(self) -> list[float]:
        return list(self.state.seen)

    @read_only
    async def most_overlapping(self) -> int:
        return self.most_running

    def plain(self) -> None:  # (a timer callback written without async)
        self.state.count += 1

    async def bad(self, case: str) -> None:
        if case == "negative period":
            self.timers.every(-1, self.tick)
        elif case == "zero period":
            self.timers.every(0, self.tick)
        elif case == "negative delay":
            self.timers.after(-0.5, self.tick)
        elif case == "nan period":
            self.timers.every(float("nan"), self.tick)
        elif case == "name not a string":
            self.timers.every(1, self.tick, name=42)  # type: ignore[arg-type]
        elif case == "callback not callable":
            self.timers.after(1, "tick")  # type: ignore[arg-type]
        elif case == "callback not async":
            self.timers.every(1, self.plain)  # type: ignore[arg-type]
        elif case == "delay of a thousand years":
            self.timers.after(1000 * 365 * 86_400, self.tick)
        elif case == "change a cancelled timer":
            timer = self.timers.after(1, self.tick)
            timer.cancel()
            timer.change(1, 1)
        elif case == "change to a negative due":
            self.timers.every(1, self.tick).change(-1)
        elif case == "change to a zero period":
            self.timers.every(1, self.tick).change(1, 0)
        elif case == "period true":
            self.timers.every(True, self.tick)


class ShortLived(Ticker, name="timers.ShortLived", idle_timeout=5):
    pass


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def storage() -> MemoryStorage:
    return MemoryStorage()


@pytest.fixture
async def cluster(clock: ManualClock, storage: MemoryStorage) -> AsyncIterator[Cluster]:
    LOG.clear()
    GATE.clear()
    async with Cluster.local(
        actors=[Ticker, ShortLived], silos=2, clock=clock, storage=storage
    ) as running:
        yield running


async def test_periodic_timer_ticks_exactly_once_per_period(
    cluster: Cluster, clock: ManualClock
) -> None:
    actor = cluster.get(Ticker, "basic")
    await actor.start(1.0)
    await step(cluster, clock, 0.5)
    assert await actor.count() == 0  # never early
    await step(cluster, clock, 0.5)
    assert await actor.count() == 1
    await step(cluster, clock, 1.0, times=9)
    assert await actor.count() == 10
    assert await actor.times() == [float(t) for t in range(1, 11)]


async def test_first_due_differs_from_period(cluster: Cluster, clock: ManualClock) -> None:
    actor = cluster.get(Ticker, "first")
    await actor.start(2.0, first=0.0)
    await settle(cluster)
    assert await actor.count() == 1  # due at once
    await step(cluster, clock, 1.0, times=4)
    assert await actor.times() == [0.0, 2.0, 4.0]


async def test_stopped_timer_ticks_no_more(cluster: Cluster, clock: ManualClock) -> None:
    actor = cluster.get(Ticker, "stop")
    await actor.start(1.0)
    await step(cluster, clock, 1.0, times=3)
    assert await actor.stop() is False  # the handle says it is no longer active
    await step(cluster, clock, 1.0, times=5)
    assert await actor.count() == 3


async def test_one_shot_timer_fires_once(cluster: Cluster, clock: ManualClock) -> None:
    actor = cluster.get(Ticker, "once")
    await actor.start_once(2.0)
    await step(cluster, clock, 1.0, times=6)
    assert await actor.times() == [2.0]


async def test_change_from_outside_a_tick(cluster: Cluster, clock: ManualClock) -> None:
    actor = cluster.get(Ticker, "change-out")
    await actor.start(1.0)
    await step(cluster, clock, 1.0, times=2)
    await actor.change(3.0, 2.0)  # at t=2: next at 5, then every 2 s
    await step(cluster, clock, 1.0, times=8)
    assert await actor.times() == [1.0, 2.0, 5.0, 7.0, 9.0]


async def test_change_from_inside_its_own_tick(cluster: Cluster, clock: ManualClock) -> None:
    actor = cluster.get(Ticker, "change-in")
    await actor.change_inside(2, 3.0, 3.0)  # in the 2nd tick (t=2): next at 5, then every 3 s
    await actor.start(1.0)
    await step(cluster, clock, 1.0, times=11)
    assert await actor.times() == [1.0, 2.0, 5.0, 8.0, 11.0]


async def test_change_inside_a_tick_to_one_shot(cluster: Cluster, clock: ManualClock) -> None:
    actor = cluster.get(Ticker, "change-once")
    await actor.change_inside(1, 4.0, None)
    await actor.start(1.0)
    await step(cluster, clock, 1.0, times=10)
    assert await actor.times() == [1.0, 5.0]


async def test_cancel_from_inside_its_own_tick(cluster: Cluster, clock: ManualClock) -> None:
    actor = cluster.get(Ticker, "cancel-in")
    await actor.cancel_inside(3)
    await actor.start(1.0)
    await step(cluster, clock, 1.0, times=8)
    assert await actor.count() == 3


async def test_a_tick_does_not_interleave_with_calls(cluster: Cluster, clock: ManualClock) -> None:
    actor = cluster.get(Ticker, "exclusive")
    await actor.start(1.0)
    GATE["tick"] = asyncio.Event()
    clock.advance(1.0)
    while "tick-start" not in LOG:
        await asyncio.sleep(0)
    call = asyncio.ensure_future(actor.touch())
    for _ in range(50):
        await asyncio.sleep(0)
    GATE["tick"].set()
    await call
    assert LOG == ["tick-start", "tick-end", "call"]


@pytest.mark.parametrize(
    ("interleave", "order"),
    [
        (False, ["call-start", "call-end", "tick-start", "tick-end"]),
        (True, ["call-start", "tick-start", "tick-end", "call-end"]),
    ],
    ids=["waits-for-the-call", "interleave-runs-during-the-call"],
)
async def test_a_tick_waits_for_a_running_call_unless_it_interleaves(
    cluster: Cluster, clock: ManualClock, interleave: bool, order: list[str]
) -> None:
    actor = cluster.get(Ticker, f"during-call-{interleave}")
    await actor.start(1.0, interleave=interleave)
    GATE["call"] = asyncio.Event()
    call = asyncio.ensure_future(actor.hold())
    while "call-start" not in LOG:
        await asyncio.sleep(0)
    clock.advance(1.0)
    for _ in range(50):
        await asyncio.sleep(0)
    GATE["call"].set()
    await call
    await settle(cluster)
    assert order == LOG


async def test_a_timer_never_overlaps_itself(cluster: Cluster, clock: ManualClock) -> None:
    actor = cluster.get(Ticker, "no-overlap")
    await actor.start(1.0, interleave=True)
    GATE["tick"] = asyncio.Event()
    clock.advance(1.0)
    while "tick-start" not in LOG:
        await asyncio.sleep(0)
    for _ in range(5):  # five more periods pass while the first tick still runs
        clock.advance(1.0)
        for _ in range(20):
            await asyncio.sleep(0)
    assert await actor.peek() == 1
    GATE["tick"].set()
    await settle(cluster)
    # The next period counts from the end of the tick (t=6): nothing more is due until t=7.
    assert await actor.count() == 1
    await step(cluster, clock, 1.0)
    assert await actor.count() == 2
    assert await actor.most_overlapping() == 1


async def test_a_raising_tick_is_logged_rolled_back_and_the_timer_goes_on(
    cluster: Cluster, clock: ManualClock, storage: MemoryStorage, monkeypatch: Any
) -> None:
    logs = capture_logs(monkeypatch)
    actor = cluster.get(Ticker, "raises")
    await actor.fail_on(2)
    await actor.start(1.0)
    await step(cluster, clock, 1.0, times=4)
    # The 2nd tick's increment was rolled back with it; the 3rd and 4th tick ran.
    assert await actor.count() == 3
    assert await actor.times() == [1.0, 3.0, 4.0]
    failed = logs.events("timer_tick_failed")
    assert [e["timer"] for e in failed] == ["ticker"]
    assert all(e["actor"] == "timers.Ticker/raises" for e in failed)
    assert "tick failed on purpose" in failed[0]["error"]


async def test_a_changing_tick_commits_its_state(
    cluster: Cluster, clock: ManualClock, storage: MemoryStorage
) -> None:
    actor = cluster.get(Ticker, "commits")
    await actor.start(1.0)
    before = storage.writes
    await step(cluster, clock, 1.0, times=3)
    assert storage.writes == before + 3  # one per tick, like any changing turn


async def test_ticks_do_not_keep_the_activation_alive(cluster: Cluster, clock: ManualClock) -> None:
    actor = cluster.get(ShortLived, "idle")
    await actor.start(1.0)
    await step(cluster, clock, 1.0, times=4)
    assert await cluster.collect_idle() == 0  # last call 4 s ago; idle_timeout is 5 s
    await step(cluster, clock, 1.0)
    assert await cluster.collect_idle() == 1  # ticking, yet idle for 5 s: collected
    await step(cluster, clock, 1.0, times=5)
    assert not any(s.activations for s in cluster.silos)  # its timer died with it
    assert await actor.count() == 5  # (this call activates it again, with no timer)


async def test_keep_alive_ticks_keep_it_alive(cluster: Cluster, clock: ManualClock) -> None:
    actor = cluster.get(ShortLived, "alive")
    await actor.start(1.0, keep_alive=True)
    await step(cluster, clock, 1.0, times=10)
    assert await cluster.collect_idle() == 0
    assert await actor.count() == 10


def _scheduled(cluster: Cluster) -> int:
    return sum(len(s.extension(TimeService).schedule) for s in cluster.silos)  # type: ignore[union-attr]


async def test_changing_a_timer_again_and_again_keeps_the_schedule_small(
    cluster: Cluster,
) -> None:
    # (An expiry pushed back on every call: each change used to leave its cancelled entry on
    # the schedule until its due time, an hour here, so the schedule grew with every call.)
    actor = cluster.get(Ticker, "postponed")
    await actor.start(3600.0)
    for _ in range(500):
        await actor.change(3600.0, 3600.0)
    assert _scheduled(cluster) < 100
    await actor.stop()
    assert _scheduled(cluster) < 100


async def test_cancelled_sleeps_do_not_pile_up_on_a_manual_clock() -> None:
    # (A silo's schedule sleeps on its clock until its next entry, and cancels that sleep
    # whenever an earlier entry comes: each cancelled sleep stayed among the test clock's
    # sleepers until time passed it, a timer moved earlier on every call adding one a call.)
    clock = ManualClock()
    for _ in range(500):
        sleeper = asyncio.ensure_future(clock.sleep(3600.0))
        await asyncio.sleep(0)  # (it is asleep)
        sleeper.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sleeper
    assert len(clock._sleepers) < 100
    awake = asyncio.ensure_future(clock.sleep(10.0))
    await asyncio.sleep(0)
    clock.advance(10.0)
    await awake


async def test_a_collected_activation_with_a_timer_is_freed(
    cluster: Cluster, clock: ManualClock
) -> None:
    # (Its cancelled timer stayed on the schedule until due, an hour later, holding the
    # activation, its instance and its state.)
    actor = cluster.get(ShortLived, "freed")
    await actor.start(3600.0)
    (instance,) = [a.instance for s in cluster.silos for a in s.activations.values()]
    freed = weakref.ref(instance)
    del instance
    await step(cluster, clock, 6.0)
    assert await cluster.collect_idle() == 1
    gc.collect()
    assert freed() is None


@pytest.mark.parametrize(
    "case",
    [
        "negative period",
        "zero period",
        "negative delay",
        "nan period",
        "name not a string",
        "callback not callable",
        "callback not async",
        "delay of a thousand years",
        "change a cancelled timer",
        "change to a negative due",
        "change to a zero period",
        "period true",
    ],
)
async def test_bad_timers_are_refused(cluster: Cluster, case: str) -> None:
    actor = cluster.get(Ticker, f"bad-{case}")
    with pytest.raises(InvalidScheduleError) as refused:
        await actor.bad(case)
    assert f"bad-{case}" in str(refused.value)  # the error names the actor
    assert await actor.count() == 0  # the silo keeps serving the actor


def test_timers_outside_an_activation_are_refused() -> None:
    with pytest.raises(InvalidScheduleError, match="outside the runtime"):
        Ticker().timers.every(1, Ticker().tick)


async def test_a_tick_refused_by_a_full_mailbox_comes_again_next_period(
    clock: ManualClock,
) -> None:
    LOG.clear()
    GATE.clear()
    async with Cluster.local(actors=[Ticker], silos=1, clock=clock, max_queued_calls=1) as c:
        actor = c.get(Ticker, "overloaded")
        await actor.start(1.0)
        GATE["call"] = asyncio.Event()
        holding = asyncio.ensure_future(actor.hold())
        while "call-start" not in LOG:
            await asyncio.sleep(0)
        queued = asyncio.ensure_future(actor.touch())  # fills the mailbox (one call)
        await step(c, clock, 1.0)  # the tick is refused: the mailbox is full
        GATE["call"].set()
        await holding
        await queued
        assert await actor.count() == 0
        await step(c, clock, 1.0)
        assert await actor.times() == [2.0]  # the timer lived on


async def _until(probe: Any, enough: int, limit: float = 10.0) -> int:
    """Poll (real time) until ``probe()`` reaches ``enough``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while (count := await probe()) < enough:
        assert loop.time() < deadline, f"only {count} ticks after {limit} s"
        await asyncio.sleep(0.01)
    return count


async def test_timers_tick_in_real_time() -> None:
    async with Cluster.local(actors=[Ticker]) as running:
        actor = running.get(Ticker, "real-time")
        await actor.start(0.05)
        await _until(actor.count, 3)
        await actor.stop()
        stopped = await actor.count()
        once = running.get(Ticker, "real-time-once")
        await once.start_once(0.05)
        await _until(once.count, 1)  # (a later event: the stopped timer had time to tick)
        assert await actor.count() == stopped
