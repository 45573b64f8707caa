"""``SqliteStorage``: the embedded state provider, one SQLite file on aiosqlite, with group commit.

Every acknowledged turn costs a durable write, and with ``synchronous=FULL`` a SQLite commit costs
an fsync. So writes are not committed one by one: callers queue them, and a single committer task
takes everything pending and applies it in one transaction, checking each caller's ETag on its
own (a stale writer fails alone, the rest of the batch commits). While one batch is being
fsynced, the next one accumulates. Reads go straight through on a second connection, which in WAL
mode sees only committed data and never waits behind a commit.

The file records its schema version (``PRAGMA user_version``) and a raygrain marker
(``PRAGMA application_id``); a file from a newer raygrain, a corrupt file or another
application's database is refused at open and left untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

import aiosqlite

from raygrain.actors import (
    ActorId,
    ConfigurationError,
    StateDecodeError,
    StorageError,
    StorageSchemaError,
)
from raygrain.storage import _sqlite_reminders as reminders
from raygrain.storage._pending import (
    Pending,
    PendingWrite,
    WriteQueue,
    copied,
    start_committer,
)
from raygrain.storage._provider import SqlStep, StateRecord, StateWrite
from raygrain.storage._reminders import ReminderAck, ReminderRecord
from raygrain.storage._sqlite_batch import (
    FileIdentity,
    KnownVersions,
    Outcome,
    commit,
    commit_with_statements,
)
from raygrain.storage._sqlite_connection import close_quietly, is_locked, on_thread, reason
from raygrain.storage._sqlite_events import EVENT_SCHEMA, SqliteEventLog

__all__ = ["SCHEMA_VERSION", "SqliteStorage"]

SCHEMA_VERSION = 1
# "rgrn": marks the file as a raygrain state store, so another application's database is refused.
APPLICATION_ID = 0x7267726E

Durability = Literal["fsync", "normal"]
_SYNCHRONOUS: dict[str, str] = {"fsync": "FULL", "normal": "NORMAL"}

# ``version`` comes before ``data`` so that reading it never touches a large value's overflow
# pages; ``data`` NULL is a tombstone. ``type_name`` and ``actor_key`` are only for humans
# browsing the file: ``id`` (ActorId.canonical()) is the identity.
_SCHEMA = f"""
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS raygrain_state (
    id        BLOB PRIMARY KEY,
    version   INTEGER NOT NULL,
    type_name TEXT NOT NULL,
    actor_key TEXT NOT NULL,
    data      BLOB
);
PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = {SCHEMA_VERSION};
COMMIT;
"""
_SELECT_RECORD = "SELECT version, data FROM raygrain_state WHERE id = ?"
_T = TypeVar("_T")


class SqliteStorage(SqliteEventLog, WriteQueue):
    """Actor state in one SQLite file (WAL), with group commit.

    ``durability="fsync"`` (default) fsyncs every commit: an acknowledged write survives power
    loss. ``"normal"`` survives a process crash but may lose the last commits on power loss.
    ``busy_timeout`` is how long (seconds) a call waits for another connection's lock before
    failing with ``StorageError``; ``max_batch`` caps the records committed in one transaction.
    Opens on first use, or with ``await storage.open()`` / ``async with``.
    """

    # Class-level so that every method works even when __init__ refused its arguments.
    _opened = False
    _closed = False
    # Warns if the store is collected, or the interpreter exits, while it is open. (A finalizer
    # rather than __del__: a store in a reference cycle is often still uncollected at exit.)
    _unclosed: weakref.finalize[[str], SqliteStorage] | None = None

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Durability = "fsync",
        busy_timeout: float = 5.0,
        max_batch: int = 2000,
    ) -> None:
        self.path = os.fspath(path)
        if self.path == ":memory:" or self.path.startswith("file:"):
            # Two connections (writer and reader) must reach the same file.
            raise ConfigurationError(
                f"SqliteStorage needs a file path, got {self.path!r}; use MemoryStorage instead"
            )
        if durability not in _SYNCHRONOUS:
            raise ConfigurationError(
                f"SqliteStorage durability must be 'fsync' or 'normal', got {durability!r}"
            )
        if busy_timeout < 0:
            raise ConfigurationError(f"busy_timeout must be >= 0, got {busy_timeout!r}")
        if max_batch < 1:
            raise ConfigurationError(f"max_batch must be >= 1, got {max_batch!r}")
        self.durability = durability
        self.busy_timeout = busy_timeout
        self.max_batch = max_batch
        self.commits = 0  # transactions committed by the group committer, for tests and metrics
        # Called with the number of records of every batch committed (metrics: group commit).
        self.batch_observers: list[Callable[[int], object]] = []
        self._known = KnownVersions()  # touched only on the writer's thread
        self._file = FileIdentity(self.path)  # touched only on the writer's thread
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._open_lock = asyncio.Lock()
        self._opening: asyncio.Future[None] | None = None  # the attempt to open under way
        self._open_waiters = 0  # callers waiting for it
        self._pending: deque[Pending] = deque()
        self._committer: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"SqliteStorage({self.path!r}, durability={self.durability!r})"

    async def __aenter__(self) -> SqliteStorage:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- the provider protocol -----------------------------------------------------------------

    async def open(self) -> None:
        """Open (creating if needed) and check the file. Idempotent; other methods call it."""
        self._check_not_closed()
        if self._reader is not None:
            return
        # Callers arriving while an attempt is under way share it: one after the other, each
        # would wait out busy_timeout on a locked file (the tenth actor activating at once
        # failed after ten of them). A failed attempt is not kept: the next call tries again.
        attempt = self._opening
        if attempt is None:
            attempt = self._opening = asyncio.ensure_future(self._open())
            attempt.add_done_callback(self._attempt_ended)
        self._open_waiters += 1
        try:
            await asyncio.shield(attempt)
        except StorageError as exc:  # (each caller its own copy: tracebacks are per raise)
            raise type(exc)(*exc.args) from exc.__cause__
        except asyncio.CancelledError:
            if self._open_waiters == 1 and not attempt.done():
                # The last one waiting: the attempt is cancelled, and ends (closing what it
                # opened, see _connect) before this returns, as an unshared open did (the
                # loop may be closed right after: see _connect).
                self._opening = None
                attempt.cancel()
                await asyncio.wait({attempt})
            raise
        finally:
            self._open_waiters -= 1
        self._check_not_closed()  # (closed while it opened)

    def _attempt_ended(self, attempt: asyncio.Future[None]) -> None:
        if self._opening is attempt:
            self._opening = None
        if not attempt.cancelled():
            attempt.exception()  # (retrieved: waiters may all have been cancelled)

    async def _open(self) -> None:
        async with self._open_lock:
            self._check_not_closed()
            if self._writer is None:
                self._writer = await self._connect_writer()
                self._opened = True  # from here on, a forgotten aclose() leaks a connection
                self._unclosed = weakref.finalize(self, _warn_unclosed, repr(self))
            if self._reader is None:
                self._reader = await self._connect_reader()

    async def read(self, actor_id: ActorId) -> StateRecord:
        await self.open()
        assert self._reader is not None
        try:
            rows = await self._reader.execute_fetchall(_SELECT_RECORD, (actor_id.canonical(),))
        except (sqlite3.Error, ValueError) as exc:
            raise self._error(f"reading {actor_id}", exc) from exc
        for version, data in rows:
            if data is not None and not isinstance(data, bytes):
                # (Written by something else: SQLite keeps whatever type it was given.)
                raise StateDecodeError(
                    f"stored state of {actor_id} in {self.path} is {type(data).__name__}, not "
                    "bytes: not a record raygrain wrote; left untouched"
                )
            return StateRecord(data, str(version))
        return StateRecord(None, None)

    async def write(self, actor_id: ActorId, data: bytes, expected_etag: str | None) -> str:
        if self._reader is None:
            await self.open()
        return (await self._queue((StateWrite(actor_id, bytes(data), expected_etag),)))[0]

    async def clear(self, actor_id: ActorId, expected_etag: str | None) -> str:
        if self._reader is None:
            await self.open()
        return (await self._queue((StateWrite(actor_id, None, expected_etag),)))[0]

    async def write_many(self, writes: Sequence[StateWrite]) -> list[str]:
        """Queue the writes for the next batch; return once the batch containing them committed.

        If the caller is cancelled after its batch started, the writes may still commit.
        """
        await self.open()
        if not writes:
            return []
        return await self._queue(copied(writes))

    async def aclose(self) -> None:
        """Let queued writes commit, then close the file. Idempotent. (Writes queued on a store
        that was never opened fail with ``StorageError`` instead: it is closed before it opens.)"""
        if self._closed:
            return
        self._closed = True
        if self._unclosed is not None:
            self._unclosed.detach()
        if self._committer is not None:
            # wait, not await: the committer's own failure was already reported to its callers.
            await asyncio.wait({self._committer})
        await self._drain_appends()
        async with self._open_lock:
            writer, reader, self._writer, self._reader = self._writer, self._reader, None, None
            for connection in (writer, reader):
                if connection is not None:
                    await close_quietly(connection)

    # -- a caller's own SQL in a commit (storage.SqlTransactions) ------------------------------

    sql_dialect = "sqlite"

    async def commit_sql(
        self, statements: Sequence[SqlStep], writes: Sequence[StateWrite]
    ) -> list[str]:
        await self.open()
        group = PendingWrite(copied(writes), asyncio.get_running_loop().create_future())
        return await self._on_writer(
            f"running {len(statements)} SQL statements with {len(writes)} writes",
            lambda c: commit_with_statements(c, statements, group, self._known, self._file),
        )

    # -- the reminder table (storage.ReminderTable; see _sqlite_reminders) ---------------------

    async def upsert_reminder(
        self, actor_id: ActorId, name: str, first_tick: float, period: float
    ) -> ReminderRecord:
        return await self._on_writer(
            f"registering reminder {name!r} of {actor_id}",
            lambda c: reminders.upsert(c, actor_id, name, first_tick, period),
        )

    async def remove_reminder(self, actor_id: ActorId, name: str, etag: str | None) -> bool:
        return await self._on_writer(
            f"removing reminder {name!r} of {actor_id}",
            lambda c: reminders.remove(c, actor_id, name, etag),
        )

    async def reminders_of(self, actor_id: ActorId) -> list[ReminderRecord]:
        return await self._on_reader(
            f"reading the reminders of {actor_id}", lambda c: reminders.select_of(c, actor_id)
        )

    async def reminders_in(self, ranges: Sequence[tuple[int, int]]) -> list[ReminderRecord]:
        return await self._on_reader(
            "reading reminders by ring range", lambda c: reminders.select_in(c, ranges)
        )

    async def ack_reminders(self, acks: Sequence[ReminderAck]) -> None:
        if acks:
            await self._on_writer("recording reminder ticks", lambda c: reminders.ack(c, acks))

    async def _on_writer(self, doing: str, function: Callable[[sqlite3.Connection], _T]) -> _T:
        await self.open()
        if self._writer is None:  # dropped after a failed rollback: start afresh
            self._writer = await self._connect_writer()

        def checked(connection: sqlite3.Connection) -> _T:
            result = function(connection)
            self._file.check()  # what it committed went to our file (see FileIdentity)
            return result

        return await self._guarded(doing, self._writer, checked)

    async def _on_reader(self, doing: str, function: Callable[[sqlite3.Connection], _T]) -> _T:
        await self.open()
        assert self._reader is not None
        return await self._guarded(doing, self._reader, function)

    async def _guarded(
        self,
        doing: str,
        connection: aiosqlite.Connection,
        function: Callable[[sqlite3.Connection], _T],
    ) -> _T:
        try:
            return await on_thread(connection, function)
        except (sqlite3.Error, ValueError) as exc:
            raise self._error(doing, exc) from exc

    # -- opening -------------------------------------------------------------------------------

    async def _connect(self) -> aiosqlite.Connection:
        failure: list[sqlite3.Error] = []

        def connector() -> sqlite3.Connection:
            # Runs on aiosqlite's thread. isolation_level=None: we issue BEGIN/COMMIT ourselves,
            # so that a batch is exactly one transaction, its write lock taken up front.
            try:
                return sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
            except sqlite3.Error as exc:
                # Hand aiosqlite a stand-in and close it properly: when its connector raises,
                # aiosqlite stops its thread without waiting, and the thread may then call back
                # into an event loop that is already closed.
                failure.append(exc)
                return sqlite3.connect(":memory:")

        pending = aiosqlite.Connection(connector, iter_chunk_size=64)
        # A store its owner forgot to close must not keep the process alive. The interpreter
        # waits for every non-daemon thread before it finalizes anything, so aiosqlite's own
        # finalizer (which would stop the thread) never runs and the process hangs after its
        # last line. Once the event loop is gone nothing more reaches the thread, and what was
        # committed is in the file already. (aiosqlite offers no option for it: the attribute
        # is private, so this is guarded, and tests/storage/test_sqlite.py pins the behaviour.)
        thread = getattr(pending, "_thread", None)
        if isinstance(thread, threading.Thread):
            thread.daemon = True
        opening = asyncio.ensure_future(pending)
        try:
            connection = await asyncio.shield(opening)
        except asyncio.CancelledError:
            # aiosqlite's thread goes on opening the file and then calls back into this loop,
            # which may be closed by then (asyncio.run closes it right after cancelling a
            # silo's background tasks, one of which may be opening the store): let the opening
            # end and close what it opened before giving in.
            with contextlib.suppress(Exception):
                await close_quietly(await opening)
            raise
        if failure:
            await close_quietly(connection)
            raise self._open_error(failure[0]) from failure[0]
        return connection

    async def _connect_writer(self) -> aiosqlite.Connection:
        connection = await self._connect()
        try:
            # Read the header before anything can write: a corrupt, foreign or newer file is
            # refused untouched.
            rows = await connection.execute_fetchall(
                "SELECT * FROM pragma_application_id(), pragma_user_version()"
            )
            application_id, version = next(iter(rows))
            self._check_schema(int(application_id), int(version))
            await self._set_wal(connection)
            await connection.execute(f"PRAGMA synchronous = {_SYNCHRONOUS[self.durability]}")
            if version < SCHEMA_VERSION:
                await connection.executescript(_SCHEMA)
            await connection.executescript(reminders.REMINDER_SCHEMA)
            await connection.executescript(EVENT_SCHEMA)
        except BaseException as exc:
            await close_quietly(connection)
            if isinstance(exc, sqlite3.Error):
                raise self._open_error(exc) from exc
            raise
        return connection

    async def _connect_reader(self) -> aiosqlite.Connection:
        connection = await self._connect()
        try:
            await connection.execute("PRAGMA query_only = ON")
        except BaseException as exc:
            await close_quietly(connection)
            if isinstance(exc, sqlite3.Error):
                raise self._open_error(exc) from exc
            raise
        return connection

    def _check_schema(self, application_id: int, version: int) -> None:
        if application_id not in (0, APPLICATION_ID):
            raise StorageSchemaError(
                f"{self.path!r} is not a raygrain state store "
                f"(SQLite application_id {application_id:#x}); refusing to touch it"
            )
        if version > SCHEMA_VERSION:
            raise StorageSchemaError(
                f"{self.path!r} has state schema version {version}, newer than version "
                f"{SCHEMA_VERSION} that this raygrain supports; upgrade raygrain to open it"
            )

    async def _set_wal(self, connection: aiosqlite.Connection) -> None:
        rows = await connection.execute_fetchall("PRAGMA journal_mode = WAL")
        mode = str(next(iter(rows))[0])
        # Without WAL a reader blocks the committer and group commit loses its point; some
        # file systems (network mounts) cannot do WAL, and silently running without it is worse.
        if mode.lower() != "wal":
            raise StorageSchemaError(
                f"cannot use WAL journal mode on {self.path!r} (SQLite kept {mode!r}); "
                "put the database on a local file system"
            )

    def _open_error(self, exc: sqlite3.Error) -> StorageError:
        why = "it is a directory" if os.path.isdir(self.path) else reason(exc, self.busy_timeout)
        message = f"cannot open SQLite state store {self.path!r}: {why}"
        if is_locked(exc):
            # Another connection holds the lock: a passing condition (the next try opens it),
            # not an unusable store.
            return StorageError(message)
        return StorageSchemaError(message)

    # -- group commit --------------------------------------------------------------------------

    async def _run_committer(self) -> None:
        try:
            if self._reader is None:  # (queue_write does not open the file)
                try:
                    await self.open()
                except Exception as exc:
                    while self._pending:
                        self._pending.popleft().settle(exc)
            while self._pending:
                await self._commit(self._take_batch())
        finally:
            self._committer = None
            # Only reached with writes still queued if this task itself was cancelled (the loop
            # is shutting down): fail them rather than leave their callers waiting forever.
            while self._pending:
                self._pending.popleft().settle(StorageError(f"{self!r} stopped committing"))

    def _start_committer(self) -> None:
        if self._committer is None:
            self._committer = start_committer(self._run_committer)

    def _take_batch(self) -> list[Pending]:
        batch: list[Pending] = []
        size = 0
        limit = self._batch_limit(self.max_batch)
        while self._pending:
            head = self._pending[0]
            # A group larger than max_batch still goes, alone: it must be one transaction.
            if batch and size + len(head.writes) > limit:
                break
            self._pending.popleft()
            if head.dropped():
                continue  # the caller was cancelled before its write started: drop it
            batch.append(head)
            size += len(head.writes)
        return batch

    async def _commit(self, batch: list[Pending]) -> None:
        if not batch:
            return
        try:
            outcomes = await self._apply(batch)
        except sqlite3.DataError as exc:
            if len(batch) == 1:
                names = ", ".join(str(write.actor_id) for write in batch[0].writes[:3])
                batch[0].settle(self._error(f"writing {names}", exc))
                return
            # A record SQLite cannot hold (a row over SQLITE_LIMIT_LENGTH): the transaction was
            # rolled back whole, so each half runs again on its own, down to the bad entry,
            # which fails alone (one actor's giant state must not fail its neighbours' writes).
            half = len(batch) // 2
            await self._commit(batch[:half])
            await self._commit(batch[half:])
            return
        except BaseException as exc:
            for pending in batch:
                error = self._error(f"committing a batch of {len(batch)} writes", exc)
                error.__cause__ = exc
                pending.settle(error)
            if not isinstance(exc, Exception):
                raise
            return
        if self.batch_observers:
            size = sum(len(pending.writes) for pending in batch)
            for observe in self.batch_observers:
                observe(size)
        for pending, outcome in zip(batch, outcomes, strict=True):
            pending.settle(outcome)

    async def _apply(self, batch: list[Pending]) -> list[Outcome]:
        """Commit ``batch`` in one transaction, in one trip to the writer's thread.

        A trip back from the thread waits behind whatever the event loop is doing, and under
        load that is the turns the previous batch released; a batch of BEGIN, SELECT,
        executemany and COMMIT as separate awaits paid that wait four times.
        """
        if self._writer is None:  # dropped after a failed rollback: start afresh
            self._writer = await self._connect_writer()
        writer = self._writer
        try:
            outcomes = await on_thread(
                writer, lambda connection: commit(connection, batch, self._known, self._file)
            )
        except BaseException:
            await self._rollback(writer)
            raise
        self.commits += 1
        return outcomes

    async def _rollback(self, writer: aiosqlite.Connection) -> None:
        try:
            await writer.rollback()
        except (sqlite3.Error, ValueError):
            # The connection's transaction state is unknown: drop it, the next batch reconnects.
            if self._writer is writer:
                self._writer = None
            await close_quietly(writer)

    # -- errors --------------------------------------------------------------------------------

    def _check_not_closed(self) -> None:
        if self._closed:
            raise StorageError(f"{self!r} is closed")

    def _error(self, doing: str, exc: BaseException) -> StorageError:
        if isinstance(exc, StorageError):
            return type(exc)(*exc.args)
        if isinstance(exc, sqlite3.Error):
            return StorageError(
                f"SQLite state store {self.path!r} failed {doing}: {reason(exc, self.busy_timeout)}"
            )
        if isinstance(exc, ValueError) and self._closed:
            return StorageError(f"{self!r} was closed while {doing}")
        return StorageError(f"SQLite state store {self.path!r} failed {doing}: {exc!r}")


def _warn_unclosed(description: str) -> None:
    # No reference to the store: a finalizer that held one would keep it, and its
    # connections, alive. Freed, aiosqlite's own finalizers stop the connections' threads.
    warnings.warn(
        f"{description} was opened and never closed; use 'async with' or 'await aclose()'",
        ResourceWarning,
        stacklevel=2,
    )
