"""The reminder table every provider with reminders keeps (storage/_reminders.py): register,
replace (new ETag), remove by name or by a handle's ETag (stale refused), find by actor and by
ring range, acks that never go backwards nor touch a replaced registration; and it survives
reopening the store. Every provider that keeps a reminder table runs them (memory, SQLite,
PostgreSQL on the throwaway server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from raygrain.actors import ActorId, StaleReminderError
from raygrain.storage import ReminderAck, ReminderRecord, ReminderTable
from tests.storage.test_conformance import PROVIDERS

ALICE = ActorId("Device", "alice")
BOB = ActorId("Device", 7)
DURABLE = [name for name in PROVIDERS if name != "memory"]


@pytest.fixture(params=list(PROVIDERS), ids=list(PROVIDERS))
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


async def test_names_and_keys_come_back_exactly(table: ReminderTable) -> None:
    # A Python string may hold what a database's text type cannot (PostgreSQL: NUL).
    odd = ActorId("Device\x00kind", "key\x00with nul")
    record = await table.upsert_reminder(odd, "name\x00nul", 1.0, 2.0)
    assert await table.reminders_of(odd) == [record]
    [found] = await table.reminders_in([(odd.stable_hash() - 1, odd.stable_hash())])
    assert (found.actor_id, found.name) == (odd, "name\x00nul")
    await table.ack_reminders([ReminderAck(odd, "name\x00nul", record.etag, 3.0)])
    assert [r.last_tick for r in await table.reminders_of(odd)] == [3.0]
    assert await table.remove_reminder(odd, "name\x00nul", record.etag) is True


async def test_several_acks_of_one_reminder_in_one_call_keep_the_latest(
    table: ReminderTable,
) -> None:
    record = await table.upsert_reminder(BOB, "poll", 0.0, 1.0)
    acks = [ReminderAck(BOB, "poll", record.etag, tick) for tick in (4.0, 6.0, 5.0)]
    await table.ack_reminders(acks)
    assert [r.last_tick for r in await table.reminders_of(BOB)] == [6.0]


@pytest.mark.parametrize("provider", DURABLE)
async def test_reminders_survive_reopening(
    request: pytest.FixtureRequest, tmp_path: Path, provider: str
) -> None:
    storage = PROVIDERS[provider](request, tmp_path)
    assert isinstance(storage, ReminderTable)
    try:
        record = await storage.upsert_reminder(BOB, "poll", 1.0, 2.0)
        await storage.ack_reminders([ReminderAck(BOB, "poll", record.etag, 5.0)])
    finally:
        await storage.aclose()  # type: ignore[attr-defined]
    storage = PROVIDERS[provider](request, tmp_path)
    assert isinstance(storage, ReminderTable)
    try:
        [found] = await storage.reminders_of(BOB)
    finally:
        await storage.aclose()  # type: ignore[attr-defined]
    assert found == ReminderRecord(BOB, "poll", 1.0, 2.0, record.etag, 5.0)
