"""The reminder table every provider with reminders keeps (storage/_reminders.py): register,
replace (new ETag), remove by name or by a handle's ETag (stale refused), find by actor and by
ring range, acks that never go backwards nor touch a replaced registration; and it survives
reopening the store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from raygrain.actors import ActorId, StaleReminderError
from raygrain.storage import ReminderAck, ReminderTable, SqliteStorage
from tests.storage.test_conformance import PROVIDERS

ALICE = ActorId("Device", "alice")
BOB = ActorId("Device", 7)


# PostgreSQL has no reminder table yet (issue 18 stays open for it).
WITH_REMINDERS = [name for name in PROVIDERS if name != "postgres"]


@pytest.fixture(params=WITH_REMINDERS, ids=WITH_REMINDERS)
async def table(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ReminderTable]:
    storage = PROVIDERS[request.param](request, tmp_path)
    assert isinstance(storage, ReminderTable)
    try:
        yield storage
    finally:
        await storage.aclose()  # type: ignore[attr-defined]


async def test_register_list_replace_and_remove(table: ReminderTable) -> None:
    first = await table.upsert_reminder(ALICE, "poll", 10.0, 60.0)
    await table.upsert_reminder(ALICE, "report", 20.0, 3600.0)
    await table.upsert_reminder(BOB, "poll", 5.0, 60.0)
    names = sorted(r.name for r in await table.reminders_of(ALICE))
    assert names == ["poll", "report"]
    [bob] = await table.reminders_of(BOB)
    assert (bob.actor_id, bob.name, bob.first_tick, bob.period, bob.last_tick) == (
        BOB,
        "poll",
        5.0,
        60.0,
        None,
    )
    again = await table.upsert_reminder(ALICE, "poll", 30.0, 120.0)
    assert again.etag != first.etag
    [poll] = [r for r in await table.reminders_of(ALICE) if r.name == "poll"]
    assert (poll.first_tick, poll.period, poll.etag) == (30.0, 120.0, again.etag)
    with pytest.raises(StaleReminderError, match="poll"):
        await table.remove_reminder(ALICE, "poll", first.etag)
    assert await table.remove_reminder(ALICE, "poll", again.etag) is True
    assert await table.remove_reminder(ALICE, "report", None) is True
    assert await table.remove_reminder(ALICE, "report", None) is False
    with pytest.raises(StaleReminderError, match="removed"):
        await table.remove_reminder(ALICE, "report", "whatever")
    assert await table.reminders_of(ALICE) == []


async def test_ranges_find_exactly_the_actors_whose_hash_is_in_them(table: ReminderTable) -> None:
    actors = [ActorId("Device", f"d{i}") for i in range(200)]
    for actor in actors:
        await table.upsert_reminder(actor, "r", 0.0, 1.0)
    middle = 2**63
    low = {a for a in actors if a.stable_hash() <= middle}
    ranges = [(-1, middle)]
    assert {r.actor_id for r in await table.reminders_in(ranges)} == low
    assert {r.actor_id for r in await table.reminders_in([(middle, 2**64 - 1)])} == (
        set(actors) - low
    )
    assert await table.reminders_in([]) == []
    one = actors[0].stable_hash()
    assert [r.actor_id for r in await table.reminders_in([(one - 1, one)])] == [actors[0]]


async def test_acks_move_forward_only_and_only_for_the_same_registration(
    table: ReminderTable,
) -> None:
    record = await table.upsert_reminder(ALICE, "poll", 0.0, 1.0)
    await table.ack_reminders([ReminderAck(ALICE, "poll", record.etag, 3.0)])
    await table.ack_reminders([ReminderAck(ALICE, "poll", record.etag, 2.0)])
    await table.ack_reminders([ReminderAck(ALICE, "poll", "another-etag", 9.0)])
    await table.ack_reminders([ReminderAck(BOB, "missing", "x", 9.0)])  # no row: nothing
    [stored] = await table.reminders_of(ALICE)
    assert stored.last_tick == 3.0
    assert stored.etag == record.etag  # an ack does not make a handle stale
    await table.upsert_reminder(ALICE, "poll", 0.0, 1.0)
    [replaced] = await table.reminders_of(ALICE)
    assert replaced.last_tick is None
    assert await table.reminders_of(BOB) == []


async def test_sqlite_reminders_survive_reopening(tmp_path: Path) -> None:
    async with SqliteStorage(tmp_path / "r.db") as storage:
        record = await storage.upsert_reminder(BOB, "poll", 1.0, 2.0)
        await storage.ack_reminders([ReminderAck(BOB, "poll", record.etag, 5.0)])
    async with SqliteStorage(tmp_path / "r.db") as storage:
        [found] = await storage.reminders_of(BOB)
    assert found == record.__class__(BOB, "poll", 1.0, 2.0, record.etag, 5.0)
