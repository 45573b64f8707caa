"""The event log's contract (storage/_events.py), against every provider that keeps one."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from raygrain.actors import InvalidEventError, StorageError, WrongExpectedVersionError
from raygrain.storage import (
    Appended,
    EncodedEvents,
    EventLog,
    MemoryStorage,
    NewEvent,
    QueuedAppends,
    SqliteStorage,
    StoredEvent,
    encoded_events,
    open_storage,
)
from raygrain.storage import _event_appends as event_appends
from tests.helpers import RemoteToInProcessServer, wait_until

PROVIDERS: dict[str, Callable[[pytest.FixtureRequest, Path], Any]] = {
    "memory": lambda _, __: MemoryStorage(),
    "sqlite": lambda _, tmp: SqliteStorage(tmp / "state.db"),
    # The storage server's client (what silos on Ray use), to its body in this process.
    "remote": lambda _, tmp: RemoteToInProcessServer(f"sqlite:///{tmp / 'state.db'}"),
    "postgres": lambda request, _: open_storage(request.getfixturevalue("postgres_url")),
}


@pytest.fixture(params=list(PROVIDERS), ids=list(PROVIDERS))
async def log(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    storage = PROVIDERS[request.param](request, tmp_path)
    try:
        yield storage
    finally:
        await storage.aclose()


@dataclass
class Deposited:
    amount: int


def event(type_: str = "Deposited", data: Any = None) -> NewEvent:
    return NewEvent(type_, {"amount": 1} if data is None else data, uuid.uuid4().hex)


async def test_provider_is_an_event_log(log: Any) -> None:
    assert isinstance(log, EventLog)


async def test_append_then_read_stream(log: EventLog) -> None:
    first = await log.append("Account/alice", "Account", 0, [event(data={"amount": 5})])
    assert first == Appended(1, 1)
    second = await log.append(
        "Account/alice", "Account", 1, [event(data=Deposited(7)), event("Closed", None)]
    )
    assert second == Appended(3, 3)
    stored = await log.read_stream("Account/alice")
    assert [(e.version, e.position, e.type) for e in stored] == [
        (1, 1, "Deposited"),
        (2, 2, "Deposited"),
        (3, 3, "Closed"),
    ]
    assert all(e.stream == "Account/alice" and e.category == "Account" for e in stored)
    assert stored[0].data == {"amount": 5}
    assert stored[1].data == Deposited(7)  # the codec's dataclasses round-trip
    assert stored[0].recorded_at > 0
    assert [e.version for e in await log.read_stream("Account/alice", 2)] == [2, 3]
    assert [e.version for e in await log.read_stream("Account/alice", 2, limit=1)] == [2]
    assert await log.read_stream("Account/nobody") == []


async def test_a_stale_expected_version_appends_nothing(log: EventLog) -> None:
    await log.append("Account/alice", "Account", 0, [event()])
    with pytest.raises(WrongExpectedVersionError) as caught:
        await log.append("Account/alice", "Account", 0, [event(), event()])
    assert (caught.value.expected_version, caught.value.actual_version) == (0, 1)
    assert "Account/alice" in str(caught.value)
    with pytest.raises(WrongExpectedVersionError):
        await log.append("Account/bob", "Account", 3, [event()])
    assert len(await log.read_stream("Account/alice")) == 1
    assert await log.read_stream("Account/bob") == []
    assert await log.head("Account") == 1
    # None: no expectation
    assert await log.append("Account/alice", "Account", None, [event()]) == Appended(2, 2)


async def test_a_retried_append_is_stored_once(log: EventLog) -> None:
    events = [event(), event()]
    first = await log.append("Account/alice", "Account", 0, events)
    await log.append("Account/bob", "Account", 0, [event()])
    # The same append again (its caller never learnt the outcome): same answer, nothing new,
    # with the original expectation or none.
    assert await log.append("Account/alice", "Account", 0, events) == first
    assert await log.append("Account/alice", "Account", None, events) == first
    assert len(await log.read_stream("Account/alice")) == 2
    assert await log.head("Account") == 3
    with pytest.raises(InvalidEventError, match="1 of this append's 2 event ids"):
        await log.append("Account/alice", "Account", 2, [events[0], event()])
    assert len(await log.read_stream("Account/alice")) == 2


async def test_an_event_id_stored_long_ago_is_found_even_where_the_version_matches(
    log: EventLog,
) -> None:
    # The stream is where this append expects it, so a provider may skip looking its ids up;
    # the unique (stream, event id) index still finds the repeat, and the batch beside it
    # commits.
    old = event()
    await log.append("s", "A", 0, [old])
    beside = asyncio.gather(*(log.append(f"o{i}", "A", 0, [event()]) for i in range(5)))
    assert await log.append("s", "A", 1, [old]) == Appended(1, 1)
    assert [a.version for a in await beside] == [1] * 5
    assert len(await log.read_stream("s")) == 1
    assert await log.head("A") == 6


async def test_a_long_stream_reads_the_same_from_any_version(log: EventLog) -> None:
    # Long enough that SQLite's reads start from a mark (every 256th version) and follow the
    # chain; appends of several events each, another stream of the category between them.
    sizes = [1, 3, 7, 2, 5] * 25  # 450 events
    version = 0
    for index, size in enumerate(sizes):
        events = [event(data={"n": version + i + 1}) for i in range(size)]
        await log.append("long", "A", version, events)
        await log.append(f"other-{index % 3}", "A", None, [event()])
        version += size
    assert version == 450
    whole = await log.read_stream("long")
    assert [e.version for e in whole] == list(range(1, 451))
    assert [e.data["n"] for e in whole] == list(range(1, 451))
    assert len({e.position for e in whole}) == 450
    for start, limit in [
        (1, 1), (2, 300), (255, 3), (256, None), (257, 1), (258, 256), (449, 10), (450, 1),
        (451, None), (300, 0),
    ]:  # fmt: skip
        read = await log.read_stream("long", start, limit)
        end = 450 if limit is None else min(450, start + limit - 1)
        assert [e.version for e in read] == list(range(start, end + 1)), (start, limit)
        assert read == whole[start - 1 : end]
    assert await log.read_stream("nothing here", 1) == []


async def test_category_feed_in_position_order(log: EventLog) -> None:
    await log.append("Account/alice", "Account", 0, [event(), event()])
    await log.append("Order/1", "Order", 0, [event("Placed")])
    await log.append("Account/bob", "Account", 0, [event()])
    feed = await log.read_category("Account")
    assert [(e.position, e.stream, e.version) for e in feed] == [
        (1, "Account/alice", 1),
        (2, "Account/alice", 2),
        (3, "Account/bob", 1),
    ]
    assert [e.position for e in await log.read_category("Account", 1, limit=1)] == [2]
    assert await log.read_category("Account", 3) == []
    assert await log.head("Account") == 3
    assert await log.head("Order") == 1
    assert await log.head("Nothing") == 0


async def test_a_stream_stays_in_its_category(log: EventLog) -> None:
    await log.append("s", "A", 0, [event()])
    with pytest.raises(InvalidEventError, match="belongs to category 'A'"):
        await log.append("s", "B", 1, [event()])
    assert await log.head("B") == 0


@pytest.mark.parametrize(
    ("stream", "category", "expected", "events", "wrong"),
    [
        ("", "A", 0, [NewEvent("T", 1, "x")], "non-empty name"),
        ("s", "", 0, [NewEvent("T", 1, "x")], "category needs a name"),
        ("s", "A", -1, [NewEvent("T", 1, "x")], "expected_version"),
        ("s", "A", 0, [], "at least one event"),
        ("s", "A", 0, [NewEvent("", 1, "x")], "type name"),
        ("s", "A", 0, [NewEvent("T", 1, "")], "event_id"),
        ("s", "A", 0, [NewEvent("T", 1, "x"), NewEvent("T", 2, "x")], "appears twice"),
    ],
    ids=["stream", "category", "version", "empty", "type", "id", "twice"],
)
async def test_bad_appends_are_refused_by_name(
    log: EventLog, stream: str, category: str, expected: int, events: list[NewEvent], wrong: str
) -> None:
    with pytest.raises(InvalidEventError, match=wrong):
        await log.append(stream, category, expected, events)
    assert await log.head("A") == 0


async def test_an_unencodable_event_is_refused_at_the_call(log: EventLog) -> None:
    with pytest.raises(Exception, match="object"):
        await log.append("s", "A", 0, [NewEvent("T", object(), "x")])
    assert await log.read_stream("s") == []


async def test_concurrent_writers_with_one_expectation_one_wins(log: EventLog) -> None:
    await log.append("s", "A", 0, [event()])
    outcomes = await asyncio.gather(
        *(log.append("s", "A", 1, [event()]) for _ in range(10)), return_exceptions=True
    )
    won = [o for o in outcomes if isinstance(o, Appended)]
    assert won == [Appended(2, 2)]
    assert all(isinstance(o, WrongExpectedVersionError) for o in outcomes if o not in won)
    assert [e.version for e in await log.read_stream("s")] == [1, 2]


async def test_a_feed_reader_never_misses_an_event(log: EventLog) -> None:
    # Writers append concurrently (on PostgreSQL each on its own connection) while a reader
    # follows the feed from the last position it saw: a position that became visible after a
    # higher one would be skipped, and the reader would end short.
    writers, appends = 8, 15
    done = asyncio.Event()
    seen: list[StoredEvent] = []

    async def write(index: int) -> None:
        for number in range(appends):
            await log.append(f"w{index}", "Feed", number, [event(data=number)])

    async def follow() -> None:
        while True:
            finished = done.is_set()  # before the read: a read after it sees everything
            found = await log.read_category("Feed", seen[-1].position if seen else 0, limit=50)
            seen.extend(found)
            if finished and not found:
                return
            await asyncio.sleep(0)

    reader = asyncio.create_task(follow())
    await asyncio.gather(*(write(i) for i in range(writers)))
    done.set()
    await asyncio.wait_for(reader, 30)
    assert [e.position for e in seen] == list(range(1, writers * appends + 1))
    for index in range(writers):
        assert [e.data for e in seen if e.stream == f"w{index}"] == list(range(appends))


async def test_sqlite_events_survive_reopening(tmp_path: Path) -> None:
    async with SqliteStorage(tmp_path / "state.db") as storage:
        appended = await storage.append("s", "A", 0, [event(), event()])
    async with SqliteStorage(tmp_path / "state.db") as storage:
        assert [e.version for e in await storage.read_stream("s")] == [1, 2]
        assert await storage.head("A") == appended.position
        assert await storage.append("s", "A", 2, [event()]) == Appended(3, 3)


async def test_sqlite_appends_queued_at_close_commit(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "state.db")
    await storage.open()
    pending = [asyncio.create_task(storage.append(f"s{i}", "A", 0, [event()])) for i in range(5)]
    await asyncio.sleep(0)  # they are queued
    await storage.aclose()
    assert {(await task).version for task in pending} == {1}
    with pytest.raises(StorageError, match="closed"):
        await storage.append("late", "A", 0, [event()])
    async with SqliteStorage(tmp_path / "state.db") as reopened:
        assert await reopened.head("A") == 5


async def test_a_queued_append_tells_its_outcome_once_after_returning(log: Any) -> None:
    if not isinstance(log, QueuedAppends):
        pytest.skip(f"{type(log).__name__} does not queue appends (QueuedAppends is optional)")
    told: list[tuple[str, Appended | Exception]] = []
    for name, expected in (("first", 0), ("second", 1), ("stale", 0)):
        log.queue_append("s", "A", expected, [event()], lambda o, n=name: told.append((n, o)))
        assert [n for n, _ in told] != [name], "told before queue_append returned"
    # A value the codec refuses, and a malformed append: raised at the call, nothing queued.
    with pytest.raises(Exception, match="object"):
        log.queue_append("s", "A", None, [NewEvent("T", object(), "x")], told.append)
    with pytest.raises(InvalidEventError, match="at least one event"):
        log.queue_append("s", "A", None, [], told.append)
    await wait_until(lambda: len(told) == 3, "the three queued appends to be told")
    outcomes = dict(told)
    assert (outcomes["first"], outcomes["second"]) == (Appended(1, 1), Appended(2, 2))
    assert isinstance(outcomes["stale"], WrongExpectedVersionError)
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(told) == 3, "an outcome was told twice"
    assert [e.version for e in await log.read_stream("s")] == [1, 2]
    await log.aclose()
    with pytest.raises(StorageError, match="closed"):
        log.queue_append("s", "A", 2, [event()], told.append)


async def test_a_queued_append_may_come_encoded_and_is_checked_again(log: Any) -> None:
    # What an event-sourced turn keeps for a retry: the events encoded once, sent again as
    # they are (the same bytes, the same ids: the retry of a stored append is told its result).
    if not isinstance(log, QueuedAppends):
        pytest.skip(f"{type(log).__name__} does not queue appends (QueuedAppends is optional)")
    told: list[Appended | Exception] = []
    encoded = encoded_events([NewEvent("T", {"n": 1}, "id-1"), NewEvent("T", {"n": 2}, "id-2")])
    log.queue_append("s", "A", 0, encoded, told.append)
    log.queue_append("s", "A", 0, encoded, told.append)  # a retry after an unknown outcome
    await wait_until(lambda: len(told) == 2, "both queued appends to be told")
    assert told == [Appended(2, 2), Appended(2, 2)]
    assert [(e.version, e.data, e.event_id) for e in await log.read_stream("s")] == [
        (1, {"n": 1}, "id-1"),
        (2, {"n": 2}, "id-2"),
    ]
    bad = [
        EncodedEvents([("T", "not bytes", "id-3")]),
        EncodedEvents([("", b"\x01", "id-3")]),
        EncodedEvents([("T", b"\x01", "id-3"), ("T", b"\x01", "id-3")]),
        EncodedEvents(),
    ]
    for events in bad:
        with pytest.raises(InvalidEventError, match="stream 's'"):
            log.queue_append("s", "A", 2, events, told.append)
    assert len(await log.read_stream("s")) == 2


async def test_an_append_may_come_encoded_and_is_checked_the_same(log: EventLog) -> None:
    # What an event-sourced actor appends when it awaits the append (a memory log, a snapshot
    # due): its events as encoded when they were raised, on every provider.
    encoded = encoded_events([NewEvent("T", {"n": 1}, "id-1"), NewEvent("T", {"n": 2}, "id-2")])
    assert await log.append("s", "A", 0, encoded) == Appended(2, 2)
    assert await log.append("s", "A", 0, encoded) == Appended(2, 2)  # a retry: stored once
    assert [(e.version, e.data, e.event_id) for e in await log.read_stream("s")] == [
        (1, {"n": 1}, "id-1"),
        (2, {"n": 2}, "id-2"),
    ]
    bad = {
        "expected an encoded event": EncodedEvents([("T", "not bytes", "id-3")]),
        "type name": EncodedEvents([("", b"\x81\xa1n\x01", "id-3")]),
        "event_id": EncodedEvents([("T", b"\x81\xa1n\x01", "")]),
        "appears twice": EncodedEvents([("T", b"\x01", "id-3"), ("T", b"\x02", "id-3")]),
        "at least one event": EncodedEvents(),
    }
    for wrong, events in bad.items():
        with pytest.raises(InvalidEventError, match=wrong):
            await log.append("s", "A", 2, events)
    assert len(await log.read_stream("s")) == 2


async def test_a_file_with_the_old_event_id_index_gets_the_new_one(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with SqliteStorage(path) as storage:
        first = await storage.append("s", "A", 0, [NewEvent("T", 1, "id-1")])
    # As a store made before the index was keyed by the event id first left it.
    with sqlite3.connect(path) as connection:
        connection.execute("DROP INDEX raygrain_events_event_ids")
        connection.execute(
            "CREATE UNIQUE INDEX raygrain_events_ids ON raygrain_events (stream, event_id)"
        )
    async with SqliteStorage(path) as storage:
        assert await storage.append("s", "A", 0, [NewEvent("T", 1, "id-1")]) == first  # a retry
        assert await storage.append("t", "A", 0, [NewEvent("T", 2, "id-1")]) == Appended(1, 2)
    with sqlite3.connect(path) as connection:
        indexes = {
            name: sql
            for name, sql in connection.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index'"
            )
        }
    assert "raygrain_events_ids" not in indexes
    assert "(event_id, stream)" in indexes["raygrain_events_event_ids"]


@pytest.mark.parametrize("provider", ["sqlite", "postgres"])
async def test_an_append_batch_carries_at_most_max_batch_bytes(
    provider: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: Any
) -> None:
    """Appends were batched by event count only: big events made one statement past what
    PostgreSQL takes (1 GB), refused for ever. Here the cap is 10 kB: 4 kB events go two by
    two (a bigger one alone), and all are stored."""
    monkeypatch.setattr(event_appends, "MAX_BATCH_BYTES", 10_000)
    storage = PROVIDERS[provider](request, tmp_path)
    batches: list[int] = []
    commit_batch = storage._commit_batch

    async def counted(batch: Any) -> None:
        batches.append(len(batch))
        await commit_batch(batch)

    storage._commit_batch = counted
    try:
        big = "x" * 4_000
        appends = [
            storage.append(f"Big-{k}", "Big", 0, [event(data={"blob": big})]) for k in range(8)
        ]
        appends.append(storage.append("Big-huge", "Big", 0, [event(data={"blob": big * 5})]))
        await asyncio.gather(*appends)
        assert max(batches) <= 2 and sum(batches) == 9
        assert len(await storage.read_category("Big", 0, 100)) == 9
    finally:
        await storage.aclose()
