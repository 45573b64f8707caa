"""``PostgresStorage``: actor state in PostgreSQL through asyncpg, with group commit.

The production store: on Ray every silo connects to the database itself. Writes are queued, and
a committer task sends a batch of them as one statement (storage/_postgres_batch.py): the records
travel as arrays, only those whose ETag matches are applied, and ``RETURNING`` says which won,
so a thousand concurrent turns of one silo cost a few round trips and commits, not a thousand.
An atomic group (``write_many``) that matches only in part aborts its batch's statement, which
then runs again in a transaction without it.

Reads retry with backoff while the server is unreachable, up to ``read_timeout``; a write whose
connection fails fails with ``StorageError`` (its outcome is unknown once it was sent), and the
connection pool reconnects by itself when the server is back. The schema is created on first use
and versioned (``raygrain_schema``); a database from a newer raygrain is refused.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import urllib.parse
import warnings
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg

from raygrain.actors import ActorId, ConfigurationError, StorageError, StorageSchemaError
from raygrain.storage._pending import Pending, WriteQueue, copied, start_committer
from raygrain.storage._postgres_batch import (
    Outcome,
    Statements,
    apply_batch,
    apply_with_statements,
    fetch_records,
    record_of,
    take_batch,
)
from raygrain.storage._postgres_errors import (
    BAD_INPUT,
    RETRY_BATCH,
    SERVER_ERROR,
    UNREACHABLE,
    describe,
    safe,
    write_error,
)
from raygrain.storage._postgres_events import PostgresEventLog
from raygrain.storage._postgres_pool import open_pool
from raygrain.storage._postgres_reminders import ReminderStatements
from raygrain.storage._postgres_schema import MIGRATIONS, SCHEMA_VERSION, quote
from raygrain.storage._postgres_url import POSTGRES_OPTIONS, check_postgres_url, check_ssl_mode
from raygrain.storage._provider import SqlStep, StateRecord, StateWrite
from raygrain.storage._reminders import ReminderAck, ReminderRecord

__all__ = [
    "MIGRATIONS",
    "POSTGRES_OPTIONS",
    "SCHEMA_VERSION",
    "PostgresStorage",
    "check_postgres_url",
]


_DEADLOCK_RETRIES = 5
_MIN_STATEMENT_TIMEOUT = 0.001
_MAX_STATEMENT_TIMEOUT = 2_147_483.647  # PostgreSQL's largest, 2^31 - 1 ms
_T = TypeVar("_T")
_RETRY_READ: tuple[type[BaseException], ...] = (StorageError, *UNREACHABLE)


class PostgresStorage(PostgresEventLog, WriteQueue):
    """Actor state in a PostgreSQL database, with group commit.

    ``dsn`` is a ``postgresql://user:password@host:port/database`` URL (asyncpg's and
    libpq's form; options such as ``sslmode`` pass through). ``pool_size``: the most
    connections this process opens (up to ``pipelines`` commit batches, the rest serve reads).
    ``statement_timeout`` (seconds): the server cancels a statement running longer, and the
    client gives up waiting a little after. ``connect_timeout``: per connection attempt.
    ``read_timeout``: how long a read keeps retrying while the server is unreachable (the
    default call deadline). ``max_batch``: the most records in one statement; ``pipelines``: the
    most batches in flight at once, each on its own connection (a batch gathers while others
    commit; ``max_batch=1, pipelines=1`` is one commit per write). ``schema``: the
    PostgreSQL schema holding the tables (created if missing), to keep deployments apart on
    one database. Connects on first use, or with ``await storage.open()`` / ``async with``.
    """

    _opened = False
    _closed = False

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = 10,
        statement_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        max_batch: int = 2000,
        pipelines: int = 1,
        schema: str = "public",
    ) -> None:
        parts = urllib.parse.urlsplit(dsn)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ConfigurationError(
                f"PostgresStorage needs a postgresql://user:password@host:port/database URL, "
                f"got {safe(dsn)!r}"
            )
        check_postgres_url(dsn)
        for name, value in (
            ("pool_size", pool_size),
            ("max_batch", max_batch),
            ("pipelines", pipelines),
            ("statement_timeout", statement_timeout),
            ("connect_timeout", connect_timeout),
            ("read_timeout", read_timeout),
        ):
            if not value > 0:
                raise ConfigurationError(f"PostgresStorage {name} must be > 0, got {value!r}")
            if not math.isfinite(value):
                raise ConfigurationError(
                    f"PostgresStorage {name} must be a finite number, got {value!r}"
                )
        # The server takes whole milliseconds, and reads 0 as "no timeout".
        if not _MIN_STATEMENT_TIMEOUT <= statement_timeout <= _MAX_STATEMENT_TIMEOUT:
            raise ConfigurationError(
                f"PostgresStorage statement_timeout must be from {_MIN_STATEMENT_TIMEOUT} s "
                f"(1 ms) to {_MAX_STATEMENT_TIMEOUT} s, got {statement_timeout!r}"
            )
        check_ssl_mode(dsn)
        if not schema or "\x00" in schema:
            raise ConfigurationError(f"PostgresStorage schema must be a name, got {schema!r}")
        self.dsn = dsn
        self.pool_size = pool_size
        self.statement_timeout = statement_timeout
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_batch = max_batch
        self.pipelines = pipelines
        self.schema = schema
        self.commits = 0  # statements that committed a batch, for tests and metrics
        self._where = safe(dsn)
        self._quoted_schema = quote(schema)
        self._sql = Statements.in_schema(self._quoted_schema)
        self._reminders = ReminderStatements(self._quoted_schema)
        self._pool: asyncpg.Pool | None = None
        self._opening: asyncio.Future[None] | None = None  # the connection being made
        self._pending: deque[Pending] = deque()
        self._committers: set[asyncio.Task[None]] = set()
        self._in_flight: set[ActorId] = set()  # records of the batches being committed

    def __repr__(self) -> str:
        return f"PostgresStorage({self._where!r}, schema={self.schema!r})"

    async def __aenter__(self) -> PostgresStorage:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if self._opened and not self._closed:
            warnings.warn(
                f"{self!r} was opened and never closed; use 'async with' or 'await aclose()'",
                ResourceWarning,
                stacklevel=2,
            )

    # -- the provider protocol -----------------------------------------------------------------

    async def open(self) -> None:
        """Connect and create or check the schema. Idempotent; other methods call it. Raises
        ``StorageError`` when the server cannot be reached, ``StorageSchemaError`` when the
        database holds a newer schema."""
        self._check_not_closed()
        if self._pool is not None:
            return
        # Every caller waiting meanwhile shares one attempt: one after the other, N readers
        # took N connect timeouts (and a cluster's close as long) while the server was away.
        opening = self._opening
        if opening is None or opening.done():
            opening = self._opening = asyncio.ensure_future(self._open_pool())
            opening.add_done_callback(_retrieved)
        try:
            await asyncio.shield(opening)
        except asyncio.CancelledError:
            if opening.cancelled():  # (the store closed while it connected; not our caller)
                self._check_not_closed()
            raise

    async def _open_pool(self) -> None:
        pool = await open_pool(
            self.dsn,
            size=self.pool_size,
            connect_timeout=self.connect_timeout,
            command_timeout=self._client_timeout,
            statement_timeout=self.statement_timeout,
            schema=self.schema,
            name=repr(self),
        )
        if self._closed:  # (closed while it connected: nobody will close this pool)
            pool.terminate()
            self._check_not_closed()
        self._pool = pool
        self._opened = True

    async def read(self, actor_id: ActorId) -> StateRecord:
        return record_of(
            await self._retrying(
                f"reading {actor_id}",
                lambda connection: connection.fetchrow(self._sql.read, actor_id.canonical()),
            )
        )

    async def read_many(self, actor_ids: Sequence[ActorId]) -> list[StateRecord]:
        """``read`` of every id, in one query (``storage.ReadsMany``)."""
        keys = [actor_id.canonical() for actor_id in actor_ids]
        if not keys:
            return []
        return await self._retrying(  # type: ignore[no-any-return]
            f"reading {len(keys)} records", lambda c: fetch_records(c, self._sql, keys)
        )

    async def write(self, actor_id: ActorId, data: bytes, expected_etag: str | None) -> str:
        return (await self._queue((StateWrite(actor_id, bytes(data), expected_etag),)))[0]

    async def clear(self, actor_id: ActorId, expected_etag: str | None) -> str:
        return (await self._queue((StateWrite(actor_id, None, expected_etag),)))[0]

    async def write_many(self, writes: Sequence[StateWrite]) -> list[str]:
        """Apply every write or none, in one transaction (batched with other writes). If the
        caller is cancelled after its batch was sent, the writes may still commit."""
        self._check_not_closed()
        if not writes:
            return []
        ids = [w.actor_id for w in writes]
        if len(set(ids)) != len(ids):
            raise StorageError(f"write_many names a record more than once: {[str(i) for i in ids]}")
        return await self._queue(copied(writes))

    # -- a caller's own SQL in a commit (storage.SqlTransactions) ------------------------------

    sql_dialect = "postgresql"

    async def commit_sql(
        self, statements: Sequence[SqlStep], writes: Sequence[StateWrite]
    ) -> list[str]:
        self._check_not_closed()
        writes = copied(writes)
        return await self._once(
            f"running {len(statements)} SQL statements with {len(writes)} writes",
            lambda c: apply_with_statements(c, self._sql, statements, writes),
        )

    async def aclose(self) -> None:
        """Let queued writes finish, then close the connections. Idempotent."""
        if self._closed:
            return
        self._closed = True
        # A first connection still being made is given up at once: the writes queued behind
        # it fail as not written (waiting for it delayed the close by a connect timeout, and
        # the writes failed anyway: a pool made after the close is not used).
        opening, self._opening = self._opening, None
        if opening is not None and not opening.done():
            opening.cancel()
            await asyncio.wait({opening})
        while self._committers:
            await asyncio.wait(set(self._committers))
        await self._drain_appends()
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self.connect_timeout)
            except UNREACHABLE:
                pool.terminate()

    # -- the reminder table (storage.ReminderTable; see _postgres_reminders) -------------------

    async def upsert_reminder(
        self, actor_id: ActorId, name: str, first_tick: float, period: float
    ) -> ReminderRecord:
        return await self._once(
            f"registering reminder {name!r} of {actor_id}",
            lambda c: self._reminders.upsert(c, actor_id, name, first_tick, period),
        )

    async def remove_reminder(self, actor_id: ActorId, name: str, etag: str | None) -> bool:
        return await self._once(
            f"removing reminder {name!r} of {actor_id}",
            lambda c: self._reminders.remove(c, actor_id, name, etag),
        )

    async def reminders_of(self, actor_id: ActorId) -> list[ReminderRecord]:
        return await self._retrying(  # type: ignore[no-any-return]
            f"reading the reminders of {actor_id}", lambda c: self._reminders.of(c, actor_id)
        )

    async def reminders_in(self, ranges: Sequence[tuple[int, int]]) -> list[ReminderRecord]:
        return await self._retrying(  # type: ignore[no-any-return]
            "reading reminders by ring range", lambda c: self._reminders.in_ranges(c, ranges)
        )

    async def ack_reminders(self, acks: Sequence[ReminderAck]) -> None:
        # Retried like a read: an ack only ever moves a tick forward, so a second run of one
        # that did commit changes nothing.
        if acks:
            await self._retrying("recording reminder ticks", lambda c: self._reminders.ack(c, acks))

    # -- connections ---------------------------------------------------------------------------

    @property
    def _client_timeout(self) -> float:
        # The server cancels at statement_timeout; the client waits a little longer for that
        # answer, and past it takes the connection for lost (a partition, a frozen server).
        return self.statement_timeout + 5.0

    async def _retrying(self, doing: str, query: Callable[[asyncpg.Connection], Any]) -> Any:
        """Run a read, retrying with backoff while the server is unreachable, for up to
        ``read_timeout`` seconds (reads change nothing, so running one again is harmless)."""
        deadline = time.monotonic() + self.read_timeout
        delay = 0.05
        while True:
            self._check_not_closed()
            try:
                # (Bounded by the read's own deadline, not the connection's timeout.)
                await asyncio.wait_for(self.open(), max(0.0, deadline - time.monotonic()))
                pool = self._pool
                assert pool is not None
                connection = await pool.acquire(timeout=self._client_timeout)
                try:
                    return await query(connection)
                except UNREACHABLE:
                    connection.terminate()  # (see _once)
                    raise
                finally:
                    await pool.release(connection)
            except StorageSchemaError:
                raise
            except _RETRY_READ as exc:
                if self._closed:
                    raise StorageError(f"{self!r} was closed while {doing}") from exc
                if time.monotonic() + delay > deadline:
                    raise StorageError(
                        f"{self!r} unreachable for {self.read_timeout:g}s while {doing}: "
                        f"{describe(exc)}"
                    ) from exc
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 1.0)
            except asyncpg.PostgresError as exc:
                raise StorageError(f"{self!r} failed {doing}: {describe(exc)}") from exc

    async def _once(self, doing: str, query: Callable[[asyncpg.Connection], Awaitable[_T]]) -> _T:
        """Run a write once: once it was sent, a failed connection leaves its outcome unknown,
        and running it again could undo what a later call did."""
        try:
            await self.open()
        except StorageError as exc:
            raise type(exc)(f"{exc} ({doing}: nothing was written)") from exc
        assert self._pool is not None
        try:
            connection = await self._pool.acquire(timeout=self._client_timeout)
        except SERVER_ERROR as exc:
            raise StorageError(
                f"{self!r} is unreachable; nothing was written {doing}: {describe(exc)}"
            ) from exc
        try:
            return await query(connection)
        except asyncpg.PostgresError as exc:
            if isinstance(exc, asyncpg.PostgresConnectionError):
                connection.terminate()
                raise self._unknown(doing, exc) from exc
            raise StorageError(
                f"{self!r} refused {doing}; nothing was written: {describe(exc)}"
            ) from exc
        except UNREACHABLE as exc:
            # A connection whose statement timed out (a frozen server) or broke is closed, not
            # given back as it is: releasing it waits for asyncpg's cancel request, another
            # timeout, while the caller (and the committer behind it) waits too.
            connection.terminate()
            raise self._unknown(doing, exc) from exc
        finally:
            await self._pool.release(connection)

    def _unknown(self, doing: str, exc: BaseException) -> StorageError:
        return StorageError(
            f"{self!r}: the connection failed {doing}, which may or may not have taken effect "
            f"(outcome unknown): {describe(exc)}"
        )

    # -- group commit --------------------------------------------------------------------------

    def _start_committer(self) -> None:
        if len(self._committers) < (self.pipelines if self._committers else 1):
            self._committers.add(start_committer(self._run_committer))

    async def _run_committer(self) -> None:
        cancelled = False
        try:
            while self._pending:
                batch, keys = take_batch(
                    self._pending, self._in_flight, self._batch_limit(self.max_batch)
                )
                if not batch:
                    break  # the rest waits for records in flight; their committers take it
                if self._pending:
                    self._start_committer()  # another batch can gather and go meanwhile
                self._in_flight |= keys
                try:
                    await self._commit(batch)
                finally:
                    self._in_flight -= keys
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            self._committers.discard(asyncio.current_task())  # type: ignore[arg-type,unused-ignore]
            if self._pending and not self._committers:
                if cancelled:  # the loop is closing: nobody will commit these
                    while self._pending:
                        error = StorageError(f"{self!r} stopped committing")
                        self._pending.popleft().settle(error)
                else:
                    self._start_committer()

    async def _commit(self, batch: list[Pending]) -> None:
        try:
            outcomes = await self._apply(batch)
        except BAD_INPUT as exc:
            if len(batch) == 1:
                batch[0].settle(write_error(self, exc, batch))
                return
            # The server refused the whole statement for a record it cannot hold (a key over
            # the index's size limit, ...), so nothing was committed: each half runs again on
            # its own, down to the bad entry, which fails alone (one bad actor must not fail
            # its neighbours; halves, not one entry at a time, which made a batch of 500 into
            # 500 commits for as long as the bad actor kept writing).
            half = len(batch) // 2
            await self._commit(batch[:half])
            await self._commit(batch[half:])
            return
        except BaseException as exc:
            error = exc if isinstance(exc, StorageError) else write_error(self, exc, batch)
            for pending in batch:
                pending.settle(type(error)(*error.args))
            if not isinstance(exc, Exception):
                raise
            return
        self._settle_batch(batch, outcomes)

    async def _apply(self, batch: list[Pending]) -> list[Outcome]:
        """Commit what can be committed of ``batch``; the outcome of each entry, in order."""
        try:
            if self._pool is None:  # (still there while aclose lets queued writes commit)
                await self.open()
        except StorageError as exc:
            # Nothing was sent: these writes certainly did not happen.
            raise type(exc)(f"{exc} (nothing was written)") from exc
        assert self._pool is not None
        try:
            connection = await self._pool.acquire(timeout=self._client_timeout)
        except SERVER_ERROR as exc:
            raise StorageError(
                f"{self!r} is unreachable; a batch of {len(batch)} writes was not written: "
                f"{describe(exc)}"
            ) from exc
        try:
            for attempt in range(_DEADLOCK_RETRIES):
                try:
                    outcomes = await apply_batch(connection, self._sql, batch)
                    self.commits += 1
                    return outcomes
                except RETRY_BATCH:
                    if attempt == _DEADLOCK_RETRIES - 1:
                        raise
            raise AssertionError("unreachable")
        except UNREACHABLE:
            connection.terminate()  # (see _once)
            raise
        finally:
            await self._pool.release(connection)

    # -- errors --------------------------------------------------------------------------------

    def _check_not_closed(self) -> None:
        if self._closed:
            raise StorageError(f"{self!r} is closed")


def _retrieved(opening: asyncio.Future[None]) -> None:
    # Its error reaches whoever waited; with nobody left waiting, asyncio would log it.
    if not opening.cancelled():
        opening.exception()
