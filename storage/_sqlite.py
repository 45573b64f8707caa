"""``SqliteStorage``: the embedded state provider, one SQLite file on aiosqlite, with group commit.

Every acknowledged turn costs a durable write, and with ``synchronous=FULL`` a SQLite commit costs
an fsync. So writes are not committed one by one: callers queue them, and a single committer task
takes everything pending and applies it in one transaction, checking each caller's ETag on its
own (a stale writer fails alone, the rest of the batch commits). While one batch is being
fsynced, the next one accumulates. Reads go straight through on a second connection, which in WAL
mode sees only committed data and never waits behind a commit.

The file records its schema version (``PRAGMA user_version``) and a raygrain marker
(``PRAGMA application_id``); a file from a newer raygrain, a corrupt file or another
application's database is refused at open and left untouched (see ``_sqlite_open``).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import aiosqlite

from raygrain.actors import (
    ActorId,
    ConfigurationError,
    StateDecodeError,
    StorageError,
)
from raygrain.storage import _sqlite_reminders as reminders
from raygrain.storage._pending import (
    Pending,
    PendingWrite,
    WriteQueue,
    copied,
    start_committer,
    write_count,
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
from raygrain.storage._sqlite_connection import close_quietly, on_thread, reason
from raygrain.storage._sqlite_events import SqliteEventLog
from raygrain.storage._sqlite_open import SCHEMA_VERSION, SYNCHRONOUS, Durability, SqliteFile

__all__ = ["SCHEMA_VERSION", "SqliteStorage"]

_SELECT_RECORD = "SELECT version, data FROM raygrain_state WHERE id = ?"
_SELECT_RECORDS = "SELECT id, version, data FROM raygrain_state WHERE id IN ({})"
_IDS_PER_SELECT = 500  # (within SQLite's oldest limit on host parameters, 999)
_T = TypeVar("_T")


class SqliteStorage(SqliteFile, SqliteEventLog, WriteQueue):
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
        if durability not in SYNCHRONOUS:
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

    async def read(self, actor_id: ActorId) -> StateRecord:
        await self.open()
        assert self._reader is not None
        try:
            rows = await self._reader.execute_fetchall(_SELECT_RECORD, (actor_id.canonical(),))
        except (sqlite3.Error, ValueError) as exc:
            raise self._error(f"reading {actor_id}", exc) from exc
        for version, data in rows:
            return self._record(actor_id, version, data)
        return StateRecord(None, None)

    async def read_many(self, actor_ids: Sequence[ActorId]) -> list[StateRecord]:
        """``read`` of every id, in one trip to the reader's thread (``storage.ReadsMany``)."""
        if not actor_ids:
            return []
        await self.open()
        assert self._reader is not None
        keys = [actor_id.canonical() for actor_id in actor_ids]

        def select(connection: sqlite3.Connection) -> dict[bytes, tuple[Any, Any]]:
            found: dict[bytes, tuple[Any, Any]] = {}
            for start in range(0, len(keys), _IDS_PER_SELECT):
                chunk = keys[start : start + _IDS_PER_SELECT]
                query = _SELECT_RECORDS.format(", ".join("?" * len(chunk)))
                for key, version, data in connection.execute(query, chunk):
                    found[bytes(key)] = (version, data)
            return found

        found = await self._guarded(f"reading {len(keys)} records", self._reader, select)
        records = []
        for actor_id, key in zip(actor_ids, keys, strict=True):
            row = found.get(key)
            records.append(StateRecord(None, None) if row is None else self._record(actor_id, *row))
        return records

    def _record(self, actor_id: ActorId, version: Any, data: Any) -> StateRecord:
        if data is not None and not isinstance(data, bytes):
            # (Written by something else: SQLite keeps whatever type it was given.)
            raise StateDecodeError(
                f"stored state of {actor_id} in {self.path} is {type(data).__name__}, not "
                "bytes: not a record raygrain wrote; left untouched"
            )
        return StateRecord(data, str(version))

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
        if self._committer is not None:
            # wait, not await: the committer's own failure was already reported to its callers.
            await asyncio.wait({self._committer})
        await self._drain_appends()
        async with self._open_lock:
            writer, reader, self._writer, self._reader = self._writer, self._reader, None, None
            for connection in (writer, reader):
                if connection is not None:
                    await close_quietly(connection)
            # Last, under the lock: an open under way when aclose began makes its finalizer
            # after that (a store closed as it opened warned it was never closed).
            if self._unclosed is not None:
                self._unclosed.detach()

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
            size = write_count(batch)
            for observe in self.batch_observers:
                observe(size)
        self._settle_batch(batch, outcomes)

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
