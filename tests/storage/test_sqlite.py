"""SqliteStorage beyond the shared contract: durability, group commit, and unusable files.

Every bad-file case also checks that what was already stored survives it.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from raygrain.actors import (
    ActorId,
    ConfigurationError,
    InconsistentStateError,
    StateDecodeError,
    StorageError,
    StorageSchemaError,
)
from raygrain.storage import SqliteStorage, StateRecord, StateWrite
from raygrain.storage._sqlite import SCHEMA_VERSION
from raygrain.storage._sqlite_connection import on_thread
from raygrain.storage._sqlite_open import WAL_SIZE_LIMIT
from tests.helpers import wait_until

ALICE = ActorId("Account", "alice")
BOB = ActorId("Account", "bob")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
async def storage(db_path: Path) -> AsyncIterator[SqliteStorage]:
    async with SqliteStorage(db_path) as opened:
        yield opened


async def store_alice(path: Path) -> str:
    """Write one record and close, leaving a valid store behind."""
    async with SqliteStorage(path) as storage:
        return await storage.write(ALICE, b"precious", None)


def raw_records(path: Path) -> list[tuple[str, str, bytes | None, int]]:
    """What the file holds, read with plain sqlite3 (no schema checks)."""
    connection = sqlite3.connect(path)
    try:
        rows = connection.execute(
            "SELECT type_name, actor_key, data, version FROM raygrain_state ORDER BY id"
        ).fetchall()
    finally:
        connection.close()
    return [(t, k, None if d is None else bytes(d), v) for t, k, d, v in rows]


# -- durability and configuration ----------------------------------------------------------------


@pytest.mark.parametrize("durability", ["fsync", "normal"], ids=["fsync", "normal"])
async def test_data_survives_close_and_reopen(db_path: Path, durability: str) -> None:
    async with SqliteStorage(db_path, durability=durability) as storage:  # type: ignore[arg-type]
        alice = await storage.write(ALICE, b"alice", None)
        bob = await storage.clear(BOB, None)
    async with SqliteStorage(db_path, durability=durability) as storage:  # type: ignore[arg-type]
        assert await storage.read(ALICE) == StateRecord(b"alice", alice)
        assert await storage.read(BOB) == StateRecord(None, bob)
        assert await storage.write(ALICE, b"again", alice) != alice


@pytest.mark.parametrize(("durability", "synchronous"), [("fsync", 2), ("normal", 1)])
async def test_pragmas_are_wal_and_match_durability(
    db_path: Path, durability: str, synchronous: int
) -> None:
    async with SqliteStorage(db_path, durability=durability) as storage:  # type: ignore[arg-type]
        await storage.write(ALICE, b"x", None)
        # synchronous is a setting of each connection: ask the one that commits (2 is FULL).
        assert storage._writer is not None
        assert list(await storage._writer.execute_fetchall("PRAGMA synchronous")) == [
            (synchronous,)
        ]
        connection = sqlite3.connect(db_path)
        try:
            assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        finally:
            connection.close()


async def test_file_is_readable_by_humans(storage: SqliteStorage, db_path: Path) -> None:
    etag = await storage.write(ActorId("Account", 7), b"seven", None)
    await storage.write(ActorId("Account", "7"), b"str seven", None)
    await storage.write(ActorId("Account", 7), b"seven again", etag)  # an update keeps the names
    assert sorted(raw_records(db_path)) == [
        ("Account", "'7'", b"str seven", 1),
        ("Account", "7", b"seven again", 2),
    ]


async def test_opens_lazily_on_first_use(db_path: Path) -> None:
    storage = SqliteStorage(db_path)
    assert not db_path.exists()
    try:
        assert await storage.read(ALICE) == StateRecord(None, None)
        assert db_path.exists()
    finally:
        await storage.aclose()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"durability": "sometimes"}, "durability must be 'fsync' or 'normal', got 'sometimes'"),
        ({"max_batch": 0}, "max_batch must be >= 1, got 0"),
        ({"busy_timeout": -1.0}, "busy_timeout"),
    ],
    ids=["durability", "max_batch", "busy_timeout"],
)
def test_bad_options_are_configuration_errors(
    db_path: Path, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        SqliteStorage(db_path, **options)  # type: ignore[arg-type]


def test_in_memory_path_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="MemoryStorage"):
        SqliteStorage(":memory:")


async def test_unclosed_storage_warns(db_path: Path) -> None:
    before = set(threading.enumerate())
    storage = SqliteStorage(db_path)
    await storage.open()
    connection_threads = set(threading.enumerate()) - before
    # No match=: aiosqlite also warns for each of the connections, and pytest would re-raise those.
    with pytest.warns(ResourceWarning) as caught:
        del storage
        gc.collect()
    assert any("never closed" in str(warning.message) for warning in caught)
    # aiosqlite's finalizers stopped the connections' threads; let them finish on this loop.
    for thread in connection_threads:
        await asyncio.to_thread(thread.join)


FORGETS_TO_CLOSE = """
import asyncio
import sys

from raygrain import Actor, Cluster, SqliteStorage


class Counter(Actor[int]):
    async def add(self) -> int:
        self.state += 1
        return self.state


async def main() -> None:
    store = SqliteStorage(sys.argv[1])  # opened by the cluster's first call, never closed
    async with Cluster.local(actors=[Counter], storage=store) as cluster:
        print(await cluster.get(Counter, "a").add())


asyncio.run(main())
print("last line")
"""


def test_a_forgotten_store_does_not_keep_the_process_alive(tmp_path: Path) -> None:
    script = tmp_path / "forgets.py"
    script.write_text(FORGETS_TO_CLOSE)
    for run in (1, 2):
        # The bound is only there to turn a hang into a failure; it is not a timing assertion.
        done = subprocess.run(
            [sys.executable, "-W", "always::ResourceWarning", script, tmp_path / "state.db"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [str(run), "last line"]  # and the write was committed
        assert "was opened and never closed" in done.stderr  # as the docs promise


async def test_never_opened_storage_does_not_warn(db_path: Path) -> None:
    storage = SqliteStorage(db_path)
    del storage
    gc.collect()


async def test_a_store_closed_while_it_opens_does_not_warn(db_path: Path) -> None:
    # (aclose let go of the store's finalizer before waiting for the open under way, which
    # then made a new one: a store closed as it opened warned that it was never closed.)
    before = set(threading.enumerate())
    storage = SqliteStorage(db_path)
    opening = asyncio.ensure_future(storage.open())
    for _ in range(100):  # until the open waits for aiosqlite's thread to connect
        await asyncio.sleep(0)
        if set(threading.enumerate()) - before:
            break
    assert set(threading.enumerate()) - before, "the open did not reach aiosqlite's thread"
    await storage.aclose()
    try:
        await opening
    except StorageError as exc:
        assert "closed" in str(exc)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del storage, opening  # (the task's error refers to the store)
        gc.collect()
    assert not [w for w in caught if "never closed" in str(w.message)]


async def test_open_after_close_raises(db_path: Path) -> None:
    storage = SqliteStorage(db_path)
    await storage.aclose()
    with pytest.raises(StorageError, match="closed"):
        await storage.open()


def test_an_open_cancelled_midway_leaves_no_thread_calling_into_a_closed_loop(
    db_path: Path,
) -> None:
    """A silo's background task (the reminders' first load) may be opening the store when the
    silo stops and cancels it, and asyncio.run closes its loop right after. aiosqlite's thread
    went on opening the file and then called back into the closed loop ("Event loop is closed"
    tracebacks from its threads at the end of a user's script): the open must end, and close
    what it opened, before its cancellation returns."""

    def connection_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if "_connection_worker_thread" in t.name}

    async def cancel_midway(storage: SqliteStorage) -> None:
        opening = asyncio.ensure_future(storage.open())
        for _ in range(100):  # until the open waits for aiosqlite's thread to connect
            await asyncio.sleep(0)
            if connection_threads() - before:
                break
        assert connection_threads() - before, "the open did not reach aiosqlite's thread"
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening

    before = connection_threads()
    errors: list[BaseException | None] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)
    try:
        loop = asyncio.new_event_loop()
        loop.run_until_complete(cancel_midway(SqliteStorage(db_path)))
        loop.close()  # as asyncio.run does once its tasks are done
        for thread in connection_threads() - before:
            thread.join(10)
    finally:
        threading.excepthook = previous
    assert not errors, errors
    assert not connection_threads() - before, "a connection's thread is still running"


async def test_the_write_ahead_log_shrinks_back_after_a_burst(db_path: Path) -> None:
    # (SQLite reuses its -wal file from the start after a checkpoint but never shrinks it: a
    # burst of big states left it at its peak size, gigabytes after a few 100 MB states, for
    # as long as the store stayed open.)
    async with SqliteStorage(db_path, durability="normal") as storage:
        etag = None
        for index in range(3):
            etag = await storage.write(ALICE, bytes([index]) * 12_000_000, etag)
        bob = None
        for index in range(3):
            bob = await storage.write(BOB, b"%d" % index, bob)
        assert os.path.getsize(f"{db_path}-wal") <= WAL_SIZE_LIMIT
        assert (await storage.read(ALICE)).data == bytes([2]) * 12_000_000


# -- group commit --------------------------------------------------------------------------------


async def test_overlapping_writes_share_transactions(db_path: Path) -> None:
    # Deterministic overlap: the first write's commit waits for another connection's lock
    # while the other 499 arrive, so all of them are queued when it ends.
    async with SqliteStorage(db_path, busy_timeout=30.0) as storage:
        await storage.write(BOB, b"opened", None)
        actors = [ActorId("Counter", i) for i in range(500)]
        locker = sqlite3.connect(db_path, isolation_level=None)
        try:
            locker.execute("BEGIN IMMEDIATE")
            first = asyncio.ensure_future(storage.write(actors[0], b"0", None))
            await wait_until(
                lambda: storage._committer is not None and not storage._pending,
                "the first write's commit to start",
            )
            rest = [
                asyncio.ensure_future(storage.write(a, str(a.key).encode(), None))
                for a in actors[1:]
            ]
            await wait_until(lambda: len(storage._pending) == 499, "the other writes to queue")
            before = storage.commits
            locker.execute("ROLLBACK")
        finally:
            locker.close()
        assert await asyncio.gather(first, *rest) == ["1"] * 500
        # The blocked commit, then the 499 in a few transactions (one per write would be 499).
        assert storage.commits - before <= 6, storage.commits - before
        for actor in actors[1::50]:
            assert await storage.read(actor) == StateRecord(str(actor.key).encode(), "1")


async def test_max_batch_caps_a_transaction(db_path: Path) -> None:
    async with SqliteStorage(db_path, max_batch=10) as storage:
        actors = [ActorId("Counter", i) for i in range(100)]
        await asyncio.gather(*(storage.write(a, b"x", None) for a in actors))
        assert storage.commits >= 10
        # A group bigger than max_batch still commits, atomically, on its own.
        etags = await storage.write_many([StateWrite(a, b"y", "1") for a in actors])
        assert etags == ["2"] * 100


async def test_more_keys_than_one_select_can_name(storage: SqliteStorage) -> None:
    actors = [ActorId("Counter", i) for i in range(1234)]
    await storage.write_many([StateWrite(a, b"x", None) for a in actors])
    etags = await asyncio.gather(*(storage.write(a, b"y", "1") for a in actors))
    assert set(etags) == {"2"}
    with pytest.raises(InconsistentStateError):
        await storage.write_many([StateWrite(a, b"z", "1") for a in actors])


async def test_stale_writer_fails_alone_in_its_batch(storage: SqliteStorage) -> None:
    alice = await storage.write(ALICE, b"a1", None)
    commits = storage.commits
    results = await asyncio.gather(
        storage.write(ALICE, b"a2", alice),
        storage.write(BOB, b"b1", "99"),  # stale
        storage.write_many([StateWrite(ActorId("Account", i), b"g", None) for i in range(3)]),
        return_exceptions=True,
    )
    assert storage.commits == commits + 1
    assert results[0] == "2"
    assert isinstance(results[1], InconsistentStateError)
    assert results[2] == ["1", "1", "1"]
    assert await storage.read(BOB) == StateRecord(None, None)


async def test_etags_are_checked_against_earlier_writes_in_the_same_batch(
    storage: SqliteStorage,
) -> None:
    first = await storage.write(ALICE, b"v1", None)
    commits = storage.commits
    # The second write expects the ETag the first one will produce: queued together, both land.
    second, third = await asyncio.gather(
        storage.write(ALICE, b"v2", first), storage.write(ALICE, b"v3", str(int(first) + 1))
    )
    assert storage.commits == commits + 1
    assert await storage.read(ALICE) == StateRecord(b"v3", third)
    assert int(third) == int(second) + 1


async def test_a_write_by_another_store_on_the_file_is_seen(db_path: Path) -> None:
    # Each store remembers the versions it wrote; a commit by any other connection (here a
    # second store on the same file, as two silo processes would be) must make it look again.
    async with SqliteStorage(db_path) as first, SqliteStorage(db_path) as second:
        etag = await first.write(ALICE, b"v1", None)
        assert await first.write(BOB, b"b1", None) == "1"
        assert await second.write(ALICE, b"v2", etag) == "2"
        with pytest.raises(InconsistentStateError):
            await first.write(ALICE, b"stale", etag)  # its own memory says version 1
        assert await first.write(ALICE, b"v3", "2") == "3"
        assert await first.write(BOB, b"b2", "1") == "2"  # untouched keys still check out
        await second.clear(BOB, "2")
        with pytest.raises(InconsistentStateError):
            await first.write(BOB, b"b3", "2")
    assert raw_records(db_path) == [("Account", "'alice'", b"v3", 3), ("Account", "'bob'", None, 3)]


async def test_a_write_by_another_process_is_seen(db_path: Path) -> None:
    async with SqliteStorage(db_path) as store:
        etag = await store.write(ALICE, b"v1", None)
        # What another process's commit looks like to this one: a plain sqlite3 connection.
        other = sqlite3.connect(db_path, isolation_level=None)
        try:
            other.execute("UPDATE raygrain_state SET version = 7, data = ?", (b"theirs",))
        finally:
            other.close()
        with pytest.raises(InconsistentStateError):
            await store.write(ALICE, b"mine", etag)
        assert await store.read(ALICE) == StateRecord(b"theirs", "7")
        assert await store.write(ALICE, b"mine", "7") == "8"


async def test_failed_commit_fails_the_whole_batch_and_applies_nothing(
    storage: SqliteStorage, db_path: Path
) -> None:
    alice = await storage.write(ALICE, b"a1", None)
    # A trigger that aborts the statement when it meets a poisoned record: the rows of the batch
    # written before it are already in the transaction, and must be rolled back.
    admin = sqlite3.connect(db_path, isolation_level=None)
    try:
        for event in ("INSERT", "UPDATE"):
            admin.execute(
                f"CREATE TRIGGER poison_{event.lower()} BEFORE {event} ON raygrain_state "
                "WHEN NEW.type_name = 'Poison' BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
            )
        results = await asyncio.gather(
            storage.write(ALICE, b"a2", alice),
            storage.write(BOB, b"b1", None),
            storage.write(ActorId("Poison", 1), b"p", None),
            return_exceptions=True,
        )
        assert all(type(r) is StorageError for r in results), results
        assert "injected failure" in str(results[0])
        assert await storage.read(ALICE) == StateRecord(b"a1", alice)
        assert await storage.read(BOB) == StateRecord(None, None)
        admin.execute("DROP TRIGGER poison_insert")
        admin.execute("DROP TRIGGER poison_update")
    finally:
        admin.close()
    assert await storage.write(ALICE, b"a2", alice) == "2"
    assert await storage.write(ActorId("Poison", 1), b"p", None) == "1"


async def test_a_record_too_big_for_sqlite_fails_alone_in_its_batch(
    storage: SqliteStorage,
) -> None:
    # SQLite refuses a row over SQLITE_LIMIT_LENGTH (1 GB by default; lowered here so the
    # test stays small): that actor's write fails, naming it, and its neighbours commit.
    # (The whole batch failed, every writer in it told "string or blob too big".)
    alice = await storage.write(ALICE, b"a1", None)
    assert storage._writer is not None
    await on_thread(storage._writer, lambda c: c.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 10_000))
    giant = ActorId("Account", "giant")
    results = await asyncio.gather(
        storage.write(ALICE, b"a2", alice),
        storage.write(giant, b"x" * 20_000, None),
        storage.write(BOB, b"b1", None),
        return_exceptions=True,
    )
    assert results[0] == "2" and results[2] == "1", results
    assert isinstance(results[1], StorageError)
    assert str(giant) in str(results[1]) and "too big" in str(results[1])
    assert await storage.read(giant) == StateRecord(None, None)
    assert await storage.read(BOB) == StateRecord(b"b1", "1")


async def test_cancelled_caller_before_its_batch_is_dropped(storage: SqliteStorage) -> None:
    task = asyncio.create_task(storage.write(ALICE, b"never", None))
    await wait_until(lambda: bool(storage._pending), "the write to be queued")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await storage.write(BOB, b"b", None) == "1"
    assert await storage.read(ALICE) == StateRecord(None, None)


async def test_aclose_lets_queued_writes_commit(db_path: Path) -> None:
    storage = SqliteStorage(db_path)
    await storage.open()
    writes = [asyncio.create_task(storage.write(ActorId("C", i), b"x", None)) for i in range(50)]
    queued: list[str | Exception] = []
    storage.queue_write(ActorId("Q", 1), b"q", None, queued.append)
    await asyncio.sleep(0)  # (one pass: the writing tasks queue their writes)
    await storage.aclose()
    assert [await w for w in writes] == ["1"] * 50
    assert queued == ["1"]
    assert len(raw_records(db_path)) == 51


# -- queued writes ---------------------------------------------------------------------------


async def test_a_queued_write_opens_the_file_if_nothing_did(db_path: Path) -> None:
    storage = SqliteStorage(db_path)
    try:
        outcome: asyncio.Future[str | Exception] = asyncio.get_running_loop().create_future()
        storage.queue_write(ALICE, b"first", None, outcome.set_result)
        assert await outcome == "1"
        assert raw_records(db_path) == [("Account", "'alice'", b"first", 1)]
    finally:
        await storage.aclose()


async def test_a_queued_write_that_cannot_open_the_file_gets_the_error(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "missing-directory" / "state.db")
    try:
        outcome: asyncio.Future[str | Exception] = asyncio.get_running_loop().create_future()
        storage.queue_write(ALICE, b"first", None, outcome.set_result)
        error = await outcome
        assert type(error) is StorageSchemaError
        assert "missing-directory" in str(error)
    finally:
        await storage.aclose()


async def test_a_failing_callback_is_reported_and_its_batch_still_told(
    storage: SqliteStorage,
) -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        told: list[str | Exception] = []

        def broken(outcome: str | Exception) -> None:
            raise RuntimeError("a bug in the caller")

        storage.queue_write(ALICE, b"a", None, broken)
        storage.queue_write(BOB, b"b", None, told.append)
        assert await storage.write(ActorId("Account", "carol"), b"c", None) == "1"
        assert told == ["1"]
        assert [type(r["exception"]) for r in reported] == [RuntimeError]
        assert await storage.read(ALICE) == StateRecord(b"a", "1")  # committed all the same
    finally:
        loop.set_exception_handler(None)


# -- unusable files ------------------------------------------------------------------------------


async def test_a_record_holding_text_is_a_state_decode_error_left_untouched(
    db_path: Path,
) -> None:
    # A row some other program wrote text into (SQLite keeps what it is given): a typed
    # error naming the actor and the file (it was a bare TypeError), the row as it was.
    storage = SqliteStorage(db_path)
    try:
        await storage.write(ALICE, b"a", None)
        with sqlite3.connect(db_path) as other:
            other.execute("UPDATE raygrain_state SET data = 'text'")
        with pytest.raises(StateDecodeError, match="is str, not bytes") as caught:
            await storage.read(ALICE)
        assert str(db_path) in str(caught.value)
        with pytest.raises(StateDecodeError, match="is str, not bytes"):
            await storage.read_many([ALICE])
    finally:
        await storage.aclose()
    with sqlite3.connect(db_path) as other:
        assert other.execute("SELECT data FROM raygrain_state").fetchall() == [("text",)]


async def test_corrupt_file_is_refused_untouched(db_path: Path) -> None:
    garbage = os.urandom(16384)
    db_path.write_bytes(garbage)
    storage = SqliteStorage(db_path)
    try:
        with pytest.raises(StorageSchemaError, match="not a SQLite database") as caught:
            await storage.open()
        assert str(db_path) in str(caught.value)
        with pytest.raises(StorageSchemaError):
            await storage.write(ALICE, b"x", None)
    finally:
        await storage.aclose()
    assert db_path.read_bytes() == garbage


async def test_damaged_page_is_a_storage_error(db_path: Path) -> None:
    await store_alice(db_path)
    content = bytearray(db_path.read_bytes())
    page_size = int.from_bytes(content[16:18], "big")
    content[page_size:] = os.urandom(len(content) - page_size)  # keep page 1 (the schema)
    db_path.write_bytes(bytes(content))
    async with SqliteStorage(db_path) as storage:
        with pytest.raises(StorageError, match=str(db_path)):
            await storage.read(ALICE)


async def test_newer_schema_is_refused_untouched(db_path: Path) -> None:
    etag = await store_alice(db_path)
    connection = sqlite3.connect(db_path)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.close()
    before = db_path.read_bytes()
    storage = SqliteStorage(db_path)
    try:
        with pytest.raises(StorageSchemaError) as caught:
            await storage.read(ALICE)
    finally:
        await storage.aclose()
    message = str(caught.value)
    assert str(db_path) in message
    assert f"version {SCHEMA_VERSION + 1}" in message
    assert f"version {SCHEMA_VERSION}" in message
    assert db_path.read_bytes() == before
    assert raw_records(db_path) == [("Account", "'alice'", b"precious", int(etag))]


async def test_another_applications_database_is_refused(db_path: Path) -> None:
    connection = sqlite3.connect(db_path)
    connection.execute("PRAGMA application_id = 42")
    connection.execute("CREATE TABLE theirs (x)")
    connection.commit()
    connection.close()
    before = db_path.read_bytes()
    storage = SqliteStorage(db_path)
    try:
        with pytest.raises(StorageSchemaError, match="not a raygrain state store"):
            await storage.open()
    finally:
        await storage.aclose()
    assert db_path.read_bytes() == before


@pytest.mark.parametrize(
    "where",
    ["parent_is_a_file", "under_proc", "missing_directory", "is_a_directory"],
    ids=["parent_is_a_file", "under_proc", "missing_directory", "is_a_directory"],
)
async def test_unopenable_path_is_a_clear_error(tmp_path: Path, where: str) -> None:
    # These fail even for root, unlike a chmod'ed directory.
    regular_file = tmp_path / "file"
    regular_file.write_text("not a directory")
    path = {
        "parent_is_a_file": regular_file / "state.db",
        "under_proc": Path("/proc/raygrain-test-state.db"),
        "missing_directory": tmp_path / "missing" / "state.db",
        "is_a_directory": tmp_path,
    }[where]
    storage = SqliteStorage(path)
    try:
        with pytest.raises(StorageSchemaError, match="cannot open") as caught:
            await storage.write(ALICE, b"x", None)
        assert str(path) in str(caught.value)
    finally:
        await storage.aclose()
    assert regular_file.read_text() == "not a directory"


async def test_read_only_directory_is_a_clear_error(tmp_path: Path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    path = directory / "state.db"
    await store_alice(path)
    directory.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(directory, os.W_OK):
            pytest.skip("running as root: chmod does not make a directory read-only")
        storage = SqliteStorage(path)
        try:
            with pytest.raises(StorageError, match=str(path)):
                await storage.write(ALICE, b"x", "1")
        finally:
            await storage.aclose()
    finally:
        directory.chmod(stat.S_IRWXU)
    assert raw_records(path) == [("Account", "'alice'", b"precious", 1)]


async def test_locked_database_is_a_storage_error_then_recovers(db_path: Path) -> None:
    etag = await store_alice(db_path)
    async with SqliteStorage(db_path, busy_timeout=0.2) as storage:
        await storage.read(ALICE)
        locker = sqlite3.connect(db_path, isolation_level=None)
        try:
            locker.execute("BEGIN EXCLUSIVE")
            queued: asyncio.Future[str | Exception] = asyncio.get_running_loop().create_future()
            storage.queue_write(ActorId("Account", "carol"), b"blocked", None, queued.set_result)
            results = await asyncio.gather(
                storage.write(ALICE, b"blocked", etag),
                storage.write(BOB, b"blocked", None),
                queued,
                return_exceptions=True,
            )
            for result in results:
                assert type(result) is StorageError, result
                assert "locked" in str(result)
                assert str(db_path) in str(result)
            # WAL: readers are not blocked by a writer's lock.
            assert await storage.read(ALICE) == StateRecord(b"precious", etag)
            locker.execute("ROLLBACK")
        finally:
            locker.close()
        new_etag = await storage.write(ALICE, b"unblocked", etag)
        assert await storage.read(ALICE) == StateRecord(b"unblocked", new_etag)
        assert await storage.read(BOB) == StateRecord(None, None)


async def test_opening_while_another_connection_holds_the_lock(db_path: Path) -> None:
    etag = await store_alice(db_path)
    locker = sqlite3.connect(db_path, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        async with SqliteStorage(db_path, busy_timeout=0.2) as storage:
            assert await storage.read(ALICE) == StateRecord(b"precious", etag)
            with pytest.raises(StorageError, match="locked"):
                await storage.write(ALICE, b"x", etag)
            locker.execute("ROLLBACK")
            assert await storage.write(ALICE, b"x", etag) != etag
    finally:
        locker.close()


async def test_a_new_file_being_written_by_another_connection_opens_once_it_is_done(
    db_path: Path,
) -> None:
    # Switching a file to WAL takes SQLite's exclusive lock, and SQLite does not wait for it
    # (no busy handler there): while another connection wrote to a file not yet in WAL mode
    # (another process creating the store as this one opens it), the open failed at once,
    # saying it had waited busy_timeout.
    locker = sqlite3.connect(db_path, isolation_level=None)
    storage = SqliteStorage(db_path, busy_timeout=10)
    try:
        locker.execute("CREATE TABLE theirs (x)")
        locker.execute("BEGIN IMMEDIATE")
        locker.execute("INSERT INTO theirs VALUES (1)")
        asyncio.get_running_loop().call_later(0.3, locker.execute, "COMMIT")
        etag = await storage.write(ALICE, b"a", None)
        assert await storage.read(ALICE) == StateRecord(b"a", etag)
    finally:
        locker.close()
        await storage.aclose()


async def test_a_new_file_locked_by_another_connection_is_a_passing_error(
    db_path: Path,
) -> None:
    # Another program holds a new file's lock as the store first opens it: a plain
    # StorageError naming the lock (it was a StorageSchemaError: "unusable"), and the store
    # opens once the lock is gone.
    locker = sqlite3.connect(db_path, isolation_level=None)
    storage = SqliteStorage(db_path, busy_timeout=0.1)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StorageError, match="locked") as caught:
            await storage.write(ALICE, b"a", None)
        assert not isinstance(caught.value, StorageSchemaError)
        locker.execute("ROLLBACK")
        etag = await storage.write(ALICE, b"a", None)
        assert await storage.read(ALICE) == StateRecord(b"a", etag)
    finally:
        locker.close()
        await storage.aclose()


async def test_callers_waiting_for_a_locked_file_to_open_share_one_attempt(
    db_path: Path,
) -> None:
    # (Each waiter made its own attempt after the one before it failed, one busy_timeout
    # each: the tenth of ten actors activating together failed after ten busy_timeouts.)
    locker = sqlite3.connect(db_path, isolation_level=None)
    storage = SqliteStorage(db_path, busy_timeout=0.2)
    attempts = 0
    connect = storage._connect

    async def counted() -> Any:
        nonlocal attempts
        attempts += 1
        return await connect()

    storage._connect = counted  # type: ignore[method-assign]
    try:
        locker.execute("BEGIN EXCLUSIVE")
        results = await asyncio.gather(
            *(storage.read(ActorId("Account", i)) for i in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, StorageError) and "locked" in str(r) for r in results), results
        assert attempts == 1
        locker.execute("ROLLBACK")
        etag = await storage.write(ALICE, b"a", None)  # a later call tries afresh
        assert await storage.read(ALICE) == StateRecord(b"a", etag)
    finally:
        locker.close()
        await storage.aclose()


# -- benchmark smoke -----------------------------------------------------------------------------


async def test_storage_benchmark_smoke(tmp_path: Path) -> None:
    from raygrain.benchmarks.storage_bench import run

    result = await run(quick=True, directory=str(tmp_path))
    total = result["writers"] * result["writes_per_writer"]
    for side in ("group_commit", "baseline_commit_per_write"):
        assert result[side]["writes"] == total
        assert result[side]["writes_per_s"] > 0
    assert result["baseline_commit_per_write"]["transactions"] == total
    assert result["speedup"] > 0


def test_a_queued_write_outside_an_event_loop_is_refused_and_leaves_nothing(
    db_path: Path,
) -> None:
    storage = SqliteStorage(db_path)
    told: list[str | Exception] = []
    with pytest.raises(RuntimeError):
        storage.queue_write(ALICE, b"stray", None, told.append)

    async def later() -> None:
        async with storage:
            assert await storage.write(ALICE, b"mine", None) == "1"  # no stray write first

    asyncio.run(later())
    assert told == []
    assert raw_records(db_path) == [("Account", "'alice'", b"mine", 1)]
