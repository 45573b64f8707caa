"""SQLite's event log finds a stream's events by a chain (storage/_sqlite_event_schema.py):
the chain keeps (stream, version) unique in the file itself, and a file made before the chain
is changed on open without losing or reordering an event."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path

import pytest

from raygrain.actors import StorageError, WrongExpectedVersionError
from raygrain.storage import Appended, NewEvent, SqliteStorage
from raygrain.storage._sqlite_event_schema import MARK_EVERY
from raygrain.storage._sqlite_open import APPLICATION_ID, SCHEMA_VERSION

# The event tables as raygrain made them before the chain (schema version 1).
OLD_SCHEMA = f"""
CREATE TABLE raygrain_state (
    id BLOB PRIMARY KEY, version INTEGER NOT NULL, type_name TEXT NOT NULL,
    actor_key TEXT NOT NULL, data BLOB
);
CREATE TABLE raygrain_events (
    category TEXT NOT NULL, position INTEGER NOT NULL, stream TEXT NOT NULL,
    version INTEGER NOT NULL, type TEXT NOT NULL, event_id TEXT NOT NULL,
    recorded_at REAL NOT NULL, data BLOB NOT NULL
);
CREATE UNIQUE INDEX raygrain_events_feed ON raygrain_events (category, position);
CREATE UNIQUE INDEX raygrain_events_stream ON raygrain_events (stream, version);
CREATE UNIQUE INDEX raygrain_events_event_ids ON raygrain_events (event_id, stream);
CREATE TABLE raygrain_event_heads (category TEXT PRIMARY KEY, head INTEGER NOT NULL);
PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = 1;
"""


def _indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as connection:
        return {r[0] for r in connection.execute("SELECT name FROM sqlite_master")}


async def test_a_file_made_before_the_chain_keeps_every_event(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    # Two streams of one category, interleaved, long enough for marks: msgpack {"n": k}.
    rows = []
    versions = {"s": 0, "t": 0}
    for position in range(1, 3 * MARK_EVERY + 41):
        stream = "s" if position % 3 else "t"
        versions[stream] += 1
        data = b"\x81\xa1n" + (versions[stream] & 0x7F).to_bytes(1, "big")
        rows.append(("A", position, stream, versions[stream], "T", f"id-{position}", 0.0, data))
    with sqlite3.connect(path) as connection:
        connection.executescript(OLD_SCHEMA)
        connection.executemany("INSERT INTO raygrain_events VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        connection.execute("INSERT INTO raygrain_event_heads VALUES ('A', ?)", (len(rows),))
    async with SqliteStorage(path) as storage:
        for stream in ("s", "t"):
            read = await storage.read_stream(stream)
            expected = [r for r in rows if r[2] == stream]
            assert [(e.version, e.position, e.event_id) for e in read] == [
                (r[3], r[1], r[5]) for r in expected
            ]
            assert [e.data for e in read] == [{"n": r[3] & 0x7F} for r in expected]
            for start in (2, MARK_EVERY, MARK_EVERY + 2):
                tail = await storage.read_stream(stream, start, 5)
                end = min(versions[stream], start + 4)
                assert [e.version for e in tail] == list(range(start, end + 1))
        s_version = versions["s"]
        with pytest.raises(WrongExpectedVersionError):
            await storage.append("s", "A", s_version - 1, [NewEvent("T", 1, "new-0")])
        appended = await storage.append("s", "A", s_version, [NewEvent("T", 1, "new-1")])
        assert appended == Appended(s_version + 1, len(rows) + 1)
        again = await storage.append("s", "A", 0, [NewEvent("T", 1, "id-1")])  # an old retry
        assert again == Appended(1, 1)
        assert [e.version for e in await storage.read_stream("s", s_version)] == [
            s_version,
            s_version + 1,
        ]
    indexes = _indexes(path)
    assert "raygrain_events_chain" in indexes
    assert "raygrain_events_stream" not in indexes
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


async def test_the_file_refuses_two_events_after_the_same_one(tmp_path: Path) -> None:
    # (stream, version) unique in the file itself, not only in the writer's checks: a second
    # event chained after the same one (what a writer unaware of the head would add) fails.
    path = tmp_path / "state.db"
    async with SqliteStorage(path) as storage:
        await storage.append("s", "A", 0, [NewEvent("T", 1, "a"), NewEvent("T", 2, "b")])
    with sqlite3.connect(path) as connection, pytest.raises(sqlite3.IntegrityError):
        connection.execute(
            "INSERT INTO raygrain_events VALUES ('A', 3, 's', 2, 'T', 'c', 0.0, x'01', 1)"
        )


async def test_two_stores_on_one_file_continue_each_others_streams(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with SqliteStorage(path) as first, SqliteStorage(path) as second:
        for version in range(0, 20, 2):
            await first.append("s", "A", version, [NewEvent("T", version, f"a{version}")])
            with pytest.raises(WrongExpectedVersionError):
                await second.append("s", "A", version, [NewEvent("T", 0, f"x{version}")])
            await second.append("s", "A", version + 1, [NewEvent("T", version, f"b{version}")])
        read = await first.read_stream("s")
        assert [e.version for e in read] == list(range(1, 21))
        assert [e.position for e in read] == list(range(1, 21))
        assert await second.read_stream("s", 7, 3) == read[6:9]


def _old_file(path: Path, events: int = 40) -> None:
    """A file as raygrain made it before the chain: streams s and t of category A."""
    with sqlite3.connect(path) as connection:
        connection.executescript(OLD_SCHEMA)
        versions = {"s": 0, "t": 0}
        for position in range(1, events + 1):
            stream = "s" if position % 2 else "t"
            versions[stream] += 1
            connection.execute(
                "INSERT INTO raygrain_events VALUES ('A', ?, ?, ?, 'T', ?, 0.0, x'01')",
                (position, stream, versions[stream], f"id-{position}"),
            )
        connection.execute("INSERT INTO raygrain_event_heads VALUES ('A', ?)", (events,))


async def test_stores_opening_an_old_file_at_once_change_it_once(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _old_file(path)
    stores = [SqliteStorage(path) for _ in range(4)]
    try:
        await asyncio.gather(*(store.open() for store in stores))
        for store in stores:
            assert [e.version for e in await store.read_stream("s")] == list(range(1, 21))
    finally:
        for store in stores:
            await store.aclose()


async def test_a_change_that_fails_leaves_the_old_file_as_it_was(tmp_path: Path) -> None:
    # The schema version moves with the change, in its transaction: a failed change leaves a
    # file the older raygrain still opens (here a table in the way of one of the new indexes).
    path = tmp_path / "old.db"
    _old_file(path)
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE raygrain_events_first (x)")
    with pytest.raises(StorageError):
        async with SqliteStorage(path) as storage:
            await storage.read_stream("s")
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone() == (1,)
        columns = {row[1] for row in connection.execute("PRAGMA table_info(raygrain_events)")}
        assert "previous" not in columns
        assert connection.execute("SELECT count(*) FROM raygrain_event_streams").fetchone() == (0,)


@pytest.mark.parametrize("made", ["new", "changed from the old layout"])
async def test_a_writer_unaware_of_the_chain_is_refused(tmp_path: Path, made: str) -> None:
    # A process of an older raygrain that had the file open before it changed appends rows
    # with no previous position: refused, not a second event of one version. (A stream has one
    # first event, with no previous position; a new file's table also checks every row.)
    path = tmp_path / "state.db"
    if made == "new":
        async with SqliteStorage(path) as storage:
            await storage.append("s", "A", 0, [NewEvent("T", 1, "a")])
    else:
        _old_file(path)
        async with SqliteStorage(path) as storage:
            appended = await storage.append("s", "A", 20, [NewEvent("T", 1, "a")])
            assert appended.version == 21
    with sqlite3.connect(path) as connection:
        for version in (22, 2, 1):
            with pytest.raises(
                sqlite3.IntegrityError,
                match="CHECK constraint failed: raygrain_events_chained|"
                "UNIQUE constraint failed: raygrain_events.stream",
            ):
                connection.execute(
                    "INSERT INTO raygrain_events (category, position, stream, version, type,"
                    " event_id, recorded_at, data) VALUES ('A', 1000, 's', ?, 'T', ?, 0.0, x'01')",
                    (version, f"old-{version}"),
                )
        if made == "new":  # even into a stream that has no event yet
            with pytest.raises(sqlite3.IntegrityError, match="raygrain_events_chained"):
                connection.execute(
                    "INSERT INTO raygrain_events (category, position, stream, version, type,"
                    " event_id, recorded_at, data) VALUES ('A', 1000, 'u', 2, 'T', 'u', 0.0, x'01')"
                )
        # The same row with its previous position and the next version is taken.
        connection.execute(
            "INSERT INTO raygrain_events (category, position, stream, version, type, event_id,"
            " recorded_at, data, previous) SELECT 'A', 1000, 's', version + 1, 'T', 'next', 0.0,"
            " x'01', position FROM raygrain_event_streams WHERE stream = 's'"
        )


async def test_reads_past_what_sqlite_integers_hold_and_on_a_closed_store(
    tmp_path: Path,
) -> None:
    storage = SqliteStorage(tmp_path / "state.db")
    await storage.append("s", "A", 0, [NewEvent("T", n, f"id-{n}") for n in range(5)])
    assert [e.version for e in await storage.read_stream("s", 2, sys.maxsize)] == [2, 3, 4, 5]
    assert await storage.read_stream("s", 2**70) == []
    assert await storage.read_stream("s", 3, 0) == []
    await storage.aclose()
    with pytest.raises(StorageError, match="closed"):
        await storage.read_stream("s", 1, 0)
