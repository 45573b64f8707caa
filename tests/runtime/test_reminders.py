"""Reminders, ported from Orleans' ReminderTests_Base (basic, list operations, stop by a stale
reference, several reminders on one actor) with exact tick counts on a ManualClock; a reminder
activates its actor; the reminders of a silo that leaves go on from the survivor (in memory and on
PostgreSQL); a restart from the same SQLite file or PostgreSQL database goes on from the last
delivered tick (missed ones coalesced into one);
bad input refused with InvalidScheduleError; a raising on_reminder is logged and retried."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from raygrain import (
    Actor,
    ConfigurationError,
    InvalidScheduleError,
    Reminder,
    ReminderSettings,
    ReminderTick,
    StaleReminderError,
    read_only,
)
from raygrain.runtime import Cluster, ManualClock, SiloStatus
from raygrain.storage import MemoryStorage
from tests.runtime.time_helpers import capture_logs, settle, step

SETTINGS = ReminderSettings(minimum_period=0.5)


@dataclass
class Seen:
    ticks: dict[str, list[float]] = field(default_factory=dict)
    missed: list[int] = field(default_factory=list)
    activations: int = 0


class Device(Actor[Seen], name="reminders.Device", idle_timeout=5):
    def __init__(self) -> None:
        self.fail_next = False
        self.unregister_on: int | None = None
        self.last: ReminderTick | None = None

    async def on_activate(self) -> None:
        self.state.activations += 1
        await self.context.save()

    async def on_reminder(self, name: str, tick: ReminderTick) -> None:
        self.state.ticks.setdefault(name, []).append(tick.scheduled)
        self.state.missed.append(tick.missed(self.last))
        self.last = tick
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("reminder failed on purpose")
        if self.unregister_on == len(self.state.ticks[name]):
            await self.reminders.unregister(name)

    async def register(self, name: str, due: float, period: float) -> Reminder:
        return await self.reminders.register(name, due=due, period=period)

    async def unregister(self, reminder: Reminder | str) -> bool:
        return await self.reminders.unregister(reminder)

    async def get_reminder(self, name: str) -> Reminder | None:
        return await self.reminders.get(name)

    async def all_reminders(self) -> list[Reminder]:
        return await self.reminders.list()

    async def fail_once(self) -> None:
        self.fail_next = True

    async def unregister_after(self, ticks: int) -> None:
        self.unregister_on = ticks

    async def bad(self, case: str) -> None:
        reminders = self.reminders
        if case == "zero period":
            await reminders.register("r", due=1, period=0)
        elif case == "negative period":
            await reminders.register("r", due=1, period=-5)
        elif case == "below the minimum":
            await reminders.register("r", due=1, period=0.1)
        elif case == "negative due":
            await reminders.register("r", due=-1, period=1)
        elif case == "name not a string":
            await reminders.register(7, due=1, period=1)  # type: ignore[arg-type]
        elif case == "empty name":
            await reminders.register("", due=1, period=1)
        elif case == "period not a number":
            await reminders.register("r", due=1, period="1")  # type: ignore[arg-type]
        elif case == "period of a thousand years":
            await reminders.register("r", due=1, period=1000 * 365 * 86_400)
        elif case == "due in 1e300 s":
            await reminders.register("r", due=1e300, period=60)
        elif case == "name of a megabyte":
            await reminders.register("r" * 1_000_000, due=1, period=60)

    @read_only
    async def ticks(self, name: str) -> list[float]:
        return list(self.state.ticks.get(name, []))

    @read_only
    async def missed(self) -> list[int]:
        return list(self.state.missed)

    @read_only
    async def activations(self) -> int:
        return self.state.activations


class Pool(Actor[None], name="reminders.Pool", stateless_worker=True):
    async def register(self) -> None:
        await self.reminders.register("r", due=1, period=1)


class Deaf(Actor[None], name="reminders.Deaf"):  # no on_reminder of its own
    async def register(self) -> None:
        await self.reminders.register("r", due=1, period=1)

    async def names(self) -> list[str]:
        return [r.name for r in await self.reminders.list()]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def cluster(clock: ManualClock) -> AsyncIterator[Cluster]:
    async with Cluster.local(
        actors=[Device, Pool, Deaf], silos=2, clock=clock, reminders=SETTINGS
    ) as running:
        yield running


async def test_a_reminder_ticks_once_per_period(cluster: Cluster, clock: ManualClock) -> None:
    device = cluster.get(Device, "basic")
    reminder = await device.register("poll", 1.0, 1.0)
    assert (reminder.name, reminder.first_tick, reminder.period) == ("poll", 1.0, 1.0)
    await step(cluster, clock, 0.5)
    assert await device.ticks("poll") == []  # never early
    await step(cluster, clock, 0.5)
    await step(cluster, clock, 1.0, times=4)
    assert await device.ticks("poll") == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert await device.missed() == [0, 0, 0, 0, 0]


async def test_a_reminder_activates_its_actor(cluster: Cluster, clock: ManualClock) -> None:
    device = cluster.get(Device, "virtual")
    await device.register("poll", 10.0, 10.0)
    await step(cluster, clock, 5.0)
    assert await cluster.collect_idle() == 1  # idle 5 s: gone, with its reminder still stored
    assert not any(s.activations for s in cluster.silos)
    await step(cluster, clock, 5.0)  # t=10: the reminder activates it
    assert sum(len(s.activations) for s in cluster.silos) == 1
    assert await device.ticks("poll") == [10.0]
    assert await device.activations() == 2


async def test_list_get_and_unregister(cluster: Cluster, clock: ManualClock) -> None:
    device = cluster.get(Device, "lists")
    made = [await device.register(f"r{i}", 1.0, 1.0 + i) for i in range(5)]
    assert await device.all_reminders() == made
    assert await device.get_reminder("r3") == made[3]
    assert await device.get_reminder("nope") is None
    assert await device.unregister("r3") is True
    assert await device.unregister("r3") is False
    assert [r.name for r in await device.all_reminders()] == ["r0", "r1", "r2", "r4"]
    await step(cluster, clock, 1.0, times=4)
    assert await device.ticks("r3") == []  # unregistered before it came due
    assert await device.ticks("r0") == [1.0, 2.0, 3.0, 4.0]


async def test_a_stale_handle_cannot_unregister(cluster: Cluster, clock: ManualClock) -> None:
    device = cluster.get(Device, "stale")
    first = await device.register("poll", 1.0, 1.0)
    second = await device.register("poll", 1.0, 2.0)
    assert second.etag != first.etag
    with pytest.raises(StaleReminderError, match="stale"):
        await device.unregister(first)
    await step(cluster, clock, 1.0, times=3)
    assert await device.ticks("poll") == [1.0, 3.0]  # the second registration's schedule
    assert await device.unregister(second) is True
    await step(cluster, clock, 1.0, times=3)
    assert await device.ticks("poll") == [1.0, 3.0]


async def test_several_reminders_on_one_actor_count_exactly(
    cluster: Cluster, clock: ManualClock
) -> None:
    device = cluster.get(Device, "several")
    await device.register("a", 1.0, 1.0)
    await device.register("b", 2.0, 2.0)
    await device.register("c", 3.0, 3.0)
    await step(cluster, clock, 1.0, times=12)
    assert [len(await device.ticks(n)) for n in "abc"] == [12, 6, 4]


async def test_unregister_from_inside_its_tick(cluster: Cluster, clock: ManualClock) -> None:
    device = cluster.get(Device, "self-stop")
    await device.unregister_after(3)
    await device.register("poll", 1.0, 1.0)
    await step(cluster, clock, 1.0, times=6)
    assert await device.ticks("poll") == [1.0, 2.0, 3.0]
    assert await device.all_reminders() == []


async def test_a_raising_reminder_is_logged_and_comes_again_next_period(
    cluster: Cluster, clock: ManualClock, monkeypatch: Any
) -> None:
    logs = capture_logs(monkeypatch)
    device = cluster.get(Device, "raises")
    await device.register("poll", 1.0, 1.0)
    await device.fail_once()
    await step(cluster, clock, 1.0, times=3)
    # The failed tick's changes rolled back; the next period's tick came as usual.
    assert await device.ticks("poll") == [2.0, 3.0]
    [failed] = logs.events("reminder_tick_failed")
    assert (failed["actor"], failed["reminder"]) == ("reminders.Device/raises", "poll")
    assert "on purpose" in failed["error"]
    assert await cluster.get(Device, "bystander").activations() == 1  # the silo serves on


@pytest.fixture(params=["memory", "postgres"])
async def any_store_cluster(
    request: pytest.FixtureRequest, clock: ManualClock
) -> AsyncIterator[Cluster]:
    store = "memory://" if request.param == "memory" else request.getfixturevalue("postgres_url")
    async with Cluster.local(
        actors=[Device], silos=2, clock=clock, storage=store, reminders=SETTINGS
    ) as running:
        yield running


async def test_the_reminders_of_a_leaving_silo_go_on_from_the_survivor(
    any_store_cluster: Cluster, clock: ManualClock
) -> None:
    cluster = any_store_cluster
    devices = [cluster.get(Device, f"moving-{i}") for i in range(20)]
    for device in devices:
        await device.register("poll", 1.0, 1.0)
    await step(cluster, clock, 1.0, times=2)
    leaving = cluster.silos[0]
    cluster._backend.membership.set_status(leaving.name, SiloStatus.SHUTTING_DOWN)  # type: ignore[attr-defined]
    await leaving.aclose()
    await settle(cluster)
    await step(cluster, clock, 1.0, times=3)
    for device in devices:
        # No tick lost and none repeated: the survivor went on from the last recorded one.
        assert await device.ticks("poll") == [1.0, 2.0, 3.0, 4.0, 5.0]


@pytest.mark.parametrize(
    "case",
    [
        "zero period",
        "negative period",
        "below the minimum",
        "negative due",
        "name not a string",
        "empty name",
        "period not a number",
        "period of a thousand years",
        "due in 1e300 s",
        "name of a megabyte",
    ],
)
async def test_bad_reminders_are_refused(cluster: Cluster, case: str) -> None:
    device = cluster.get(Device, f"bad-{case}")
    with pytest.raises(InvalidScheduleError):
        await device.bad(case)
    assert await device.all_reminders() == []  # nothing was stored; the actor serves on


async def test_the_minimum_period_defaults_to_a_minute(clock: ManualClock) -> None:
    async with Cluster.local(actors=[Device], clock=clock) as running:
        device = running.get(Device, "minimum")
        with pytest.raises(InvalidScheduleError, match="minimum of 60.0 s"):
            await device.register("poll", 1.0, 59.0)
        await device.register("poll", 1.0, 60.0)


async def test_reminders_outside_an_activation_are_refused(cluster: Cluster) -> None:
    with pytest.raises(InvalidScheduleError, match="outside the runtime"):
        await Device().reminders.register("r", due=1, period=1)
    with pytest.raises(InvalidScheduleError, match="stateless worker"):
        await cluster.get(Pool, 0).register()
    with pytest.raises(InvalidScheduleError, match="from inside its turns"):
        await cluster.get(Device, "from-a-client").reminders.register("r", due=1, period=1)


async def test_an_actor_without_on_reminder_cannot_register_one(cluster: Cluster) -> None:
    """Every tick would fail (Orleans refuses a grain that is not IRemindable too)."""
    deaf = cluster.get(Deaf, "deaf")
    with pytest.raises(InvalidScheduleError, match="has no 'async def on_reminder"):
        await deaf.register()
    assert await deaf.names() == []


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="minimum_period"):
        ReminderSettings(minimum_period=0)
    with pytest.raises(ConfigurationError, match="ReminderSettings"):
        Cluster.local(actors=[Device], reminders="fast")  # type: ignore[arg-type]


@pytest.mark.parametrize("provider", ["sqlite", "postgres"])
async def test_reminders_survive_a_full_restart(
    request: pytest.FixtureRequest, tmp_path: Path, provider: str
) -> None:
    store = (
        f"sqlite:///{tmp_path / 'state.db'}"
        if provider == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    clock = ManualClock()
    async with Cluster.local(
        actors=[Device], storage=store, clock=clock, reminders=SETTINGS
    ) as first:
        device = first.get(Device, "durable")
        await device.register("poll", 1.0, 1.0)
        await step(first, clock, 1.0, times=3)
        assert await device.ticks("poll") == [1.0, 2.0, 3.0]
    # Down from t=3 to t=10: occurrences 4..10 are missed, and come back as one late tick.
    clock = ManualClock(start=10.0)
    async with Cluster.local(
        actors=[Device], storage=store, clock=clock, reminders=SETTINGS
    ) as second:
        await settle(second)
        device = second.get(Device, "durable")
        assert await device.ticks("poll") == [1.0, 2.0, 3.0, 10.0]
        # The tick says which occurrence it is (t=10 is the 10th, counted from 0); this fresh
        # activation saw no earlier tick, so every one before it counts as missed.
        assert (await device.missed())[-1] == 9
        await step(second, clock, 1.0, times=2)
        assert await device.ticks("poll") == [1.0, 2.0, 3.0, 10.0, 11.0, 12.0]


async def test_a_reminder_of_a_class_not_deployed_is_retried_each_minute_and_said_once(
    clock: ManualClock, monkeypatch: Any
) -> None:
    # A cluster restarted without a class whose actors have reminders: their ticks cannot be
    # delivered. Logged once a minute per type, tried again each minute (it used to be an
    # error line every retry_delay, one second, for ever); back with the class, they go on.
    store = MemoryStorage()
    async with Cluster.local(actors=[Device], storage=store, clock=clock, reminders=SETTINGS) as c:
        for key in ("gone-1", "gone-2"):
            await c.get(Device, key).register("poll", 1.0, 1.0)
    logs = capture_logs(monkeypatch)
    async with Cluster.local(actors=[Pool], storage=store, clock=clock, reminders=SETTINGS) as c:
        await settle(c)
        await step(c, clock, 1.0, times=30)
        assert len(logs.events("reminder_undeliverable")) == 1  # for the type, not per actor
        await step(c, clock, 1.0, times=31)
        assert len(logs.events("reminder_undeliverable")) == 2
    async with Cluster.local(actors=[Device], storage=store, clock=clock, reminders=SETTINGS) as c:
        await settle(c)
        await step(c, clock, 1.0)
        assert await c.get(Device, "gone-1").ticks("poll")


class StateOnly:
    """A provider with the state protocol only (no reminder table)."""

    def __init__(self) -> None:
        inner = MemoryStorage()
        self.read, self.write, self.clear = inner.read, inner.write, inner.clear
        self.write_many, self.aclose = inner.write_many, inner.aclose


async def test_a_store_without_a_reminder_table_is_a_clear_error(clock: ManualClock) -> None:
    storage: Any = StateOnly()
    async with Cluster.local(
        actors=[Device], clock=clock, storage=storage, reminders=SETTINGS
    ) as running:
        device = running.get(Device, "no-table")
        with pytest.raises(ConfigurationError, match="no reminder table|has none"):
            await device.register("poll", 1.0, 1.0)
        assert await device.activations() == 1  # timers and the actor itself work on


async def test_reminders_tick_in_real_time(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'real.db'}"
    fast = ReminderSettings(minimum_period=0.05)
    async with Cluster.local(actors=[Device], storage=store, reminders=fast) as running:
        device = running.get(Device, "real-time")
        reminder = await device.register("poll", 0.05, 0.05)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while len(ticks := await device.ticks("poll")) < 3:
            assert loop.time() < deadline, ticks
            await asyncio.sleep(0.01)
        # On the schedule, in order (a tick late by more than a period on a busy machine
        # coalesces the ones it missed, so occurrences may be skipped, never repeated).
        occurrences = [(t - reminder.first_tick) / 0.05 for t in ticks]
        assert occurrences == sorted(set(occurrences))
        assert all(abs(n - round(n)) < 1e-3 and n >= 0 for n in occurrences), occurrences
