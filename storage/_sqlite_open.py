"""Opening ``SqliteStorage``'s file: its two connections (a writer and a read-only reader), each
on aiosqlite's thread, and the checks that refuse a file that is not ours to touch (another
application's database, a newer schema, a corrupt file, no WAL).

A mixin of the provider (storage/_sqlite.py), which owns the connections once they are open.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import warnings
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import aiosqlite

from raygrain.actors import StorageError, StorageSchemaError
from raygrain.storage import _sqlite_event_schema as event_schema
from raygrain.storage import _sqlite_reminders as reminders
from raygrain.storage._sqlite_connection import close_quietly, is_locked, reason

__all__ = ["SCHEMA_VERSION", "SYNCHRONOUS", "WAL_SIZE_LIMIT", "Durability", "SqliteFile"]

# 2: the event log's streams are chained (storage/_sqlite_event_schema.py); a raygrain that knows
# only 1 would append to them without the chain, so it refuses the file.
SCHEMA_VERSION = 2
# "rgrn": marks the file as a raygrain state store, so another application's database is refused.
APPLICATION_ID = 0x7267726E

Durability = Literal["fsync", "normal"]
SYNCHRONOUS: dict[str, str] = {"fsync": "FULL", "normal": "NORMAL"}
# The size the -wal file is cut back to when SQLite starts it over after a checkpoint: it reuses
# the file from the start but never shrinks it by itself, so one burst of big writes would keep
# the file at its peak size for as long as the store is open. (Checkpoints come every ~4 MB of
# log, so in steady state the file stays under this and is never cut.)
WAL_SIZE_LIMIT = 16 * 1024 * 1024

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


class SqliteFile:
    """The opening half of ``SqliteStorage``: ``open()`` and the connections it makes."""

    path: str
    durability: Durability
    busy_timeout: float
    _writer: aiosqlite.Connection | None
    _reader: aiosqlite.Connection | None
    _open_lock: asyncio.Lock
    _opening: asyncio.Future[None] | None  # the attempt to open under way
    _open_waiters: int  # callers waiting for it
    _opened: bool
    # Warns if the store is collected, or the interpreter exits, while it is open.
    _unclosed: weakref.finalize[[str], Any] | None

    def _check_not_closed(self) -> None:
        raise NotImplementedError

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
        return await self._set_up(await self._connect(), self._prepare_writer)

    async def _prepare_writer(self, connection: aiosqlite.Connection) -> None:
        # Read the header before anything can write: a corrupt, foreign or newer file is
        # refused untouched.
        rows = await connection.execute_fetchall(
            "SELECT * FROM pragma_application_id(), pragma_user_version()"
        )
        application_id, version = next(iter(rows))
        self._check_schema(int(application_id), int(version))
        await self._set_wal(connection)
        await connection.execute(f"PRAGMA synchronous = {SYNCHRONOUS[self.durability]}")
        await connection.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        if version == 0:  # a new file (a file of an earlier version is changed below)
            await connection.executescript(_SCHEMA)
        await connection.executescript(reminders.REMINDER_SCHEMA)
        await connection.executescript(event_schema.EVENT_SCHEMA)
        await _chain_events(connection)

    async def _connect_reader(self) -> aiosqlite.Connection:
        return await self._set_up(await self._connect(), _query_only)

    async def _set_up(
        self,
        connection: aiosqlite.Connection,
        prepare: Callable[[aiosqlite.Connection], Awaitable[None]],
    ) -> aiosqlite.Connection:
        """``connection`` once ``prepare`` has run on it; closed if it fails (a SQLite error
        as the store's error naming the file)."""
        try:
            await prepare(connection)
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
        # The switch takes SQLite's exclusive lock without waiting for it (no busy handler runs
        # there): while another connection writes to a file not in WAL mode yet (another
        # process creating the store as this one opens it) it fails at once. Try again, for
        # up to busy_timeout, as a lock taken anywhere else would wait.
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.busy_timeout
        pause = 0.005
        while True:
            try:
                rows = await connection.execute_fetchall("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:
                if not is_locked(exc) or loop.time() + pause > give_up:
                    raise
            await asyncio.sleep(pause)
            pause = min(2 * pause, 0.1)
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


def _warn_unclosed(description: str) -> None:
    # No reference to the store: a finalizer that held one would keep it, and its
    # connections, alive. Freed, aiosqlite's own finalizers stop the connections' threads.
    warnings.warn(
        f"{description} was opened and never closed; use 'async with' or 'await aclose()'",
        ResourceWarning,
        stacklevel=2,
    )


async def _query_only(connection: aiosqlite.Connection) -> None:
    await connection.execute("PRAGMA query_only = ON")


async def _chain_events(connection: aiosqlite.Connection) -> None:
    """Give a file made before the event log's chain its chain, and the file the current schema
    version, in one transaction; a file that has them is left as it is. The columns are read
    inside the transaction: two processes opening an old file at once change it once. (A file
    that needs nothing is not locked: it opens while another connection writes.)"""
    if not await _unchained(connection):
        return
    await connection.execute("BEGIN IMMEDIATE")
    try:
        if await _unchained(connection):
            rows = await connection.execute_fetchall("PRAGMA table_info(raygrain_events)")
            if "previous" not in {str(row[1]) for row in rows}:
                for statement in event_schema.MIGRATION:
                    await connection.execute(statement)
            for statement in event_schema.CHAIN:
                await connection.execute(statement)
            await connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        await connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            await connection.execute("ROLLBACK")
        raise


async def _unchained(connection: aiosqlite.Connection) -> bool:
    """Whether the file lacks any part of the chain, or has the old index, or an old version."""
    rows = await connection.execute_fetchall(
        "SELECT (SELECT user_version FROM pragma_user_version()),"
        " (SELECT count(*) FROM pragma_table_info('raygrain_events') WHERE name = 'previous'),"
        " (SELECT group_concat(name, ' ') FROM sqlite_master WHERE name IN"
        " ('raygrain_events_chain', 'raygrain_events_first', 'raygrain_events_stream'))"
    )
    version, chained, names = next(iter(rows))
    present = set(str(names or "").split())
    wanted = {"raygrain_events_chain", "raygrain_events_first"}
    return int(version) < SCHEMA_VERSION or not chained or present != wanted
