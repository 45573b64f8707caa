"""The catch-up loop of a projection activation (``ProjectionRunner``; the rows its handlers
see are ``_rows.Rows``).

The loop reads each source category's feed after its position, hands every event to the
projection's ``when``, and commits the rows the events changed together with the new offsets in
one atomic ``write_many``: the offset record's ETag fences a second owner, so each event's
effect lands exactly once in the read model, across crashes and handovers.

Applying runs ahead of committing. A batch's changed rows join the *applied* rows (encoded,
not committed yet), the positions move, and the reads waiting for them are answered from there
at once; a commit task writes everything applied so far (rows and offsets as of one moment
between batches) while the loop reads and applies the next batches. The read model a query sees
is the fold of events that are durable in the log, and a crash before the commit only means the
next owner folds them again from the committed offsets, to the same rows (``when`` is a
function of the event and the rows). A commit that fails starts the loop over from what is
committed. A ``SqlProjection``'s rows are the user's own tables, which the user queries
directly: it commits each batch before its positions move.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Collection
from typing import Any, Protocol

from raygrain.actors import (
    ActorCallTimeout,
    ActorId,
    ActorKey,
    ConfigurationError,
    InconsistentStateError,
    SiloUnavailableError,
    StorageError,
    decode,
    encode,
)
from raygrain.runtime.events._consistency import Token
from raygrain.runtime.events._rows import DELETED, Rows, row_id
from raygrain.runtime.events._sql import Sql
from raygrain.runtime.kernel import Silo, get_logger
from raygrain.storage import (
    EventLog,
    SqlTransactions,
    StateWrite,
    StorageProvider,
    StoredEvent,
    read_many,
)

__all__ = ["OFFSET_TYPE", "ProjectionRunner"]


class _Service(Protocol):
    """What a runner needs of the silo's events service (runtime/events/_extension.py), named
    here so that the runner does not import the service that imports it."""

    silo: Silo

    @property
    def log(self) -> EventLog: ...

    @property
    def storage(self) -> StorageProvider: ...


OFFSET_TYPE = "raygrain.projection"
_MAX_CACHED = 100_000
_LOADS_AT_ONCE = 256  # row reads a batch has under way at once (a store without read_many)
_READ_MANY_AT_ONCE = 5_000  # rows read in one read_many
# After a failed batch: the first retry after half a second, each next one after twice as long,
# up to five seconds; the same error is logged at most once a minute.
_RETRY_DELAY = 0.5
_MAX_RETRY_DELAY = 5.0
_SAME_ERROR_LOGGED_EVERY = 60.0
_HEADS_PERIOD = 1.0  # seconds between readings of the heads, for the lag metric
_Stored = tuple[bytes | None, str | None]  # a committed row: its data (None: absent), its ETag


class ProjectionRunner:
    """The catch-up loop of one projection activation, and the waiters on its progress."""

    def __init__(self, service: _Service, instance: Any, name: str, keeps_sql: bool) -> None:
        self.service = service
        self.instance = instance
        self.name = name
        self.keeps_sql = keeps_sql  # a SqlProjection: its rows are the user's tables
        self.sources: tuple[str, ...] = type(instance).__projection_sources__
        self.positions: Token = dict.fromkeys(self.sources, 0)  # applied (what reads see)
        self.committed_positions: Token = dict(self.positions)
        self.applied = 0  # events applied since this activation started
        self.heads: Token = {}  # each source category's head, as last read (every second)
        self.last_error: str | None = None
        self.failures = 0  # batches failed in a row
        self._logged: tuple[str, float] = ("", 0.0)  # the last error logged, and when
        self._offset_etag: str | None = None
        self.cache: dict[ActorKey, _Stored] = {}  # committed rows
        self.applied_rows: dict[ActorKey, bytes | None] = {}  # applied, not committed yet
        self._committing: asyncio.Task[None] | None = None
        self._ahead = 0  # events applied since the last commit began
        self._waiters: list[tuple[Token, asyncio.Future[None]]] = []
        self._released = False  # the activation is going: no read waits any more
        self._stopped = False  # its loop is cancelled (the commit under way too)
        self._wake = asyncio.Event()
        self._loaded = asyncio.Event()
        self._set_up = False  # SqlProjection.setup ran (once per activation)
        self._task: asyncio.Task[None] | None = None
        self._heads_task: asyncio.Task[None] | None = None
        if not self.sources:
            raise ConfigurationError(f"projection {name}: declare its sources= (class keyword)")

    def start(self) -> None:
        self._task = self.service.silo.spawn(self._run())
        self._heads_task = self.service.silo.spawn(self._watch_heads())

    def stop(self) -> None:
        self._stopped = True
        for task in (self._task, self._committing, self._heads_task):
            if task is not None:
                task.cancel()
        self.release_waiters()

    def release_waiters(self) -> None:
        """Fail the reads waiting for progress: the activation is going (a read turn waiting
        would otherwise hold its deactivation up until the read's own timeout)."""
        self._released = True  # (a read that comes to wait after this fails at once)
        for _, waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(self._gone())
        self._waiters.clear()

    def _gone(self) -> SiloUnavailableError:
        # A read: safe to retry, and the retry reaches the projection's new home.
        return SiloUnavailableError(
            f"projection {self.name} was deactivated (moved or stopped) while a read waited "
            "for it; retry the read"
        )

    def wake(self) -> None:
        self._wake.set()

    # -- progress and rows ---------------------------------------------------------------------

    def _reached(self, token: Token) -> bool:
        return self._loaded.is_set() and all(
            self.positions.get(c, p) >= p for c, p in token.items()
        )

    async def caught_up(self, token: Token, timeout: float) -> None:
        token = {c: p for c, p in token.items() if c in self.positions}  # others: not ours
        if self._loaded.is_set() and self._reached(token):
            return
        if self._released:
            raise self._gone()
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((token, waiter))
        self._wake.set()  # look at the feed now rather than at the next poll
        try:
            # (Released by the loop once the offsets are loaded and have reached the token.)
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except asyncio.TimeoutError:
            raise ActorCallTimeout(
                f"projection {self.name} did not reach {token} within {timeout:g}s "
                f"(it is at {self.positions}; last error: {self.last_error})"
            ) from None
        finally:
            if (token, waiter) in self._waiters:
                self._waiters.remove((token, waiter))

    async def read(self, key: ActorKey) -> tuple[Any, Token]:
        """Row ``key`` as applied (None if absent), and positions it is at least as new as.
        (Taken first: a row not among the applied ones has not changed since its commit, and
        what is stored then only gets newer.)"""
        positions = dict(self.positions)
        return await self.row(key, None), positions

    async def row(self, key: ActorKey, default: Any) -> Any:
        """Row ``key`` as applied: a change not committed yet, else the committed row. (A row
        read from the store here is not cached: see ``load``.)"""
        if key in self.applied_rows:
            data = self.applied_rows[key]
        elif key in self.cache:
            data = self.cache[key][0]
        else:
            data = (await self.service.storage.read(row_id(self.name, key))).data
        return default if data is None else decode(data)

    async def load(self, keys: Collection[ActorKey]) -> None:
        """Read the committed rows of ``keys`` into the cache, for handlers to build on.

        A row read from the store may be newer than this runner's offsets: during a handover a
        second owner may have committed since they were loaded. Handlers building on such a
        row would count its events twice, and reads are answered from what they applied before
        it commits (where the offset's ETag would have caught it). So once the rows are read,
        the offset record must still be the one this runner last loaded or committed -- or the
        one its own commit under way wrote, which changed no row read here (its rows are
        applied or cached ones, never loaded) -- else it starts over from the store
        (InconsistentStateError). The commit under way is not waited for first: under load a
        commit takes tens of milliseconds, and a projection meeting new streams loads rows in
        most batches; every read-your-writes query waited for those commits."""
        committing, expected = self._committing, self._offset_etag
        stored = await self._read_rows(keys, with_offsets=True)
        if stored == expected:
            return  # (nothing committed since, ours or another owner's)
        if committing is not None:  # moved by the commit under way, if it succeeded
            await asyncio.wait({committing})
            self._raise_if_failed()
        if stored != self._offset_etag:
            raise InconsistentStateError(stored, expected, f"projection {self.name}")

    async def _read_rows(self, keys: Collection[ActorKey], with_offsets: bool = False) -> Any:
        """Read the rows of ``keys`` not cached into the cache (one trip when the store reads
        many at once, ``storage.ReadsMany``; else ``_LOADS_AT_ONCE`` reads at a time).
        ``with_offsets``: then read the offset record too, after the rows (in the same trip
        when there is one), and return its ETag."""
        pending = [key for key in keys if key not in self.cache]
        storage = self.service.storage
        offsets = ActorId(OFFSET_TYPE, self.name)
        many = hasattr(storage, "read_many")
        at_once = _READ_MANY_AT_ONCE if many else _LOADS_AT_ONCE
        etag: Any = None
        # (At least one trip when the offsets are to be read with the rows.)
        for start in range(0, len(pending) or int(with_offsets and many), at_once):
            chunk = pending[start : start + at_once]
            ids = [row_id(self.name, key) for key in chunk]
            last = with_offsets and many and start + at_once >= len(pending)
            records = await read_many(storage, [*ids, offsets] if last else ids)
            if last:
                etag = records.pop().etag
            for key, record in zip(chunk, records, strict=True):
                self.cache.setdefault(key, (record.data, record.etag))
        if with_offsets and not many:
            etag = (await storage.read(offsets)).etag
        return etag

    async def lag(self) -> dict[str, int]:
        log = self.service.log
        return {c: max(0, await log.head(c) - p) for c, p in self.positions.items()}

    def lag_events(self) -> dict[str, int]:
        """The lag as of the last reading of the heads (the metric; no I/O)."""
        return {c: max(0, self.heads.get(c, p) - p) for c, p in self.positions.items()}

    async def _watch_heads(self) -> None:
        # A task of its own, not a step of the loop: a handler that hangs holds the loop, and
        # the lag of a stuck projection is the figure its operator needs most.
        while True:
            with contextlib.suppress(Exception):  # (the store is down: the last reading holds)
                self.heads = {c: await self.service.log.head(c) for c in self.sources}
            await asyncio.sleep(_HEADS_PERIOD)

    # -- the loop --------------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopped:
            try:
                if not self._loaded.is_set():
                    await self._load_offsets()
                # (Cleared before the step: an append or a waiting read that wakes it while
                # the step reads finds it awake, instead of asleep until the next poll.)
                self._wake.clear()
                if not await self._step():
                    try:
                        await asyncio.wait_for(self._wake.wait(), self.instance.poll_interval)
                    except asyncio.TimeoutError:
                        pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._stopped:
                    # Stopped while the step ran: what it failed with is the stop (the commit
                    # cancelled with the loop), not an error of the projection. (asyncio's
                    # wait_for may swallow the loop's own cancellation in Python 3.11.)
                    return
                await self._recover(exc)

    async def _recover(self, exc: Exception) -> None:
        """After a failed step: start over from what is stored."""
        if isinstance(exc, InconsistentStateError):
            # Another owner committed: start again from what is stored.
            get_logger().info("projection_fenced", projection=self.name)
            await self._start_over()
            return
        # A handler that raises (or a storage failure) stops the projection at that batch; it
        # is retried from the committed offsets until it goes through.
        self.last_error = repr(exc)
        self.failures += 1
        now = time.monotonic()
        if self._logged[0] != self.last_error or now - self._logged[1] >= (
            _SAME_ERROR_LOGGED_EVERY
        ):
            self._logged = (self.last_error, now)
            get_logger().error(
                "projection_failed",
                projection=self.name,
                error=self.last_error,
                failures=self.failures,
            )
        await self._start_over()
        # Reads go on meanwhile, from what is stored: they must not wait out the back-off
        # (an eventual read, or one whose token is applied, stalled or timed out for seconds).
        with contextlib.suppress(Exception):  # (the store is down: the loop loads them later)
            await self._load_offsets()
        delay = _RETRY_DELAY * 2 ** min(self.failures - 1, 10)
        await asyncio.sleep(min(delay, _MAX_RETRY_DELAY))

    async def _start_over(self) -> None:
        """Forget all but what is stored (after the commit under way, if any, has ended)."""
        committing, self._committing = self._committing, None
        if committing is not None:
            await asyncio.wait({committing})
            # What it failed with, if it did, is dropped: starting over is the answer to it.
            # (Reading it here keeps asyncio from logging "Task exception was never retrieved".)
            if not committing.cancelled():
                committing.exception()
        self.cache.clear()
        self.applied_rows.clear()
        self._ahead = 0
        self._loaded.clear()

    async def _load_offsets(self) -> None:
        record = await self.service.storage.read(ActorId(OFFSET_TYPE, self.name))
        stored = decode(record.data) if record.data is not None else {}
        self.positions = {c: int(stored.get(c, 0)) for c in self.sources}
        self.committed_positions = dict(self.positions)
        self._offset_etag = record.etag
        self._loaded.set()
        self._release()

    async def _step(self) -> bool:
        self._check_commit()
        progressed = False
        for category in self.sources:
            if self._ahead >= self.instance.batch_size and self._committing is not None:
                # The commits lag: let the one under way end before applying more.
                await asyncio.wait({self._committing})
                self._check_commit()
            batch = await self.service.log.read_category(
                category, self.positions[category], self.instance.batch_size
            )
            if batch:
                if self.keeps_sql:
                    await self._apply_sql(category, batch)
                else:
                    await self._apply(category, batch)
                progressed = True
        self._check_commit()
        return progressed

    async def _apply(self, category: str, batch: list[StoredEvent]) -> None:
        # The rows a batch reads for the first time are loaded together, not one storage read
        # per handler awaiting it (a projection over new streams read one row per event).
        # So a first pass runs the handlers on the rows already loaded, noting the others;
        # if it missed any, they are loaded at once and the batch runs again. when() runs
        # more than once for an event anyway (a batch is retried after a failure): only its
        # effect on the rows counts.
        rows = Rows(self, probing=True)
        try:
            await self._handle(category, batch, rows)
        except Exception:
            if not rows.missed:
                raise
        if rows.missed:
            await self.load(rows.missed)
            rows = Rows(self)
            await self._handle(category, batch, rows)
        changed = {
            key: None if value is DELETED else encode(value) for key, value in rows.changes.items()
        }
        # (From here to the release, nothing awaits: a commit starting meanwhile takes the
        # rows and the positions of the same moment.)
        self.applied_rows.update(changed)
        self.positions = {**self.positions, category: batch[-1].position}
        self.applied += len(batch)
        self._ahead += len(batch)
        self._release()

    async def _handle(self, category: str, batch: list[StoredEvent], rows: Any) -> None:
        source = type(self.instance).__projection_events__.get(category)
        for stored in batch:
            event = source.__es_events__.build(stored, source.upcast) if source else stored.data
            handled = self.instance.when(event, stored, rows)
            if inspect.isawaitable(handled):
                await handled

    # -- commits ---------------------------------------------------------------------------------

    def _raise_if_failed(self) -> None:
        """Forget the commit if it ended; raise what it failed with, if it did."""
        committing = self._committing
        if committing is None or not committing.done():
            return
        self._committing = None
        if committing.cancelled():
            raise StorageError(f"the commit of projection {self.name} was cancelled")
        failed = committing.exception()
        if failed is not None:
            raise failed

    def _check_commit(self) -> None:
        """Raise what the last commit failed with, if it did; start the next commit if there
        is something applied and no commit under way."""
        self._raise_if_failed()
        if self._committing is None and self.positions != self.committed_positions:
            self._ahead = 0
            self._committing = asyncio.get_running_loop().create_task(
                self._commit(dict(self.applied_rows), dict(self.positions))
            )
            self._committing.add_done_callback(lambda _: self._wake.set())

    async def _commit(self, rows: dict[ActorKey, bytes | None], positions: Token) -> None:
        """Commit ``rows`` and ``positions`` (everything applied as of one moment)."""
        # The ETags of rows written blind. (Their data is not built on while they are applied
        # rows, and a stale ETag fails this commit.)
        await self._read_rows(rows)
        writes = [StateWrite(ActorId(OFFSET_TYPE, self.name), encode(positions), self._offset_etag)]
        writes.extend(
            StateWrite(row_id(self.name, key), data, self.cache[key][1])
            for key, data in rows.items()
        )
        etags = await self.service.storage.write_many(writes)
        self._offset_etag = etags[0]
        self.committed_positions = positions
        if len(self.cache) > _MAX_CACHED:
            self.cache.clear()
        applied = self.applied_rows
        for (key, data), etag in zip(rows.items(), etags[1:], strict=True):
            self.cache[key] = (data, etag)
            if applied.get(key, self) is data:  # not changed again since: committed now
                del applied[key]
        self.last_error = None
        self.failures = 0

    async def _apply_sql(self, category: str, batch: list[StoredEvent]) -> None:
        store = self._sql_store()
        instance = self.instance
        if not self._set_up:
            setup = Sql(store.sql_dialect)
            instance.setup(setup)
            if setup.statements:
                await store.commit_sql(setup.statements, [])
            self._set_up = True
        sql = Sql(store.sql_dialect)
        await self._handle(category, batch, sql)
        positions = {**self.positions, category: batch[-1].position}
        offsets = StateWrite(ActorId(OFFSET_TYPE, self.name), encode(positions), self._offset_etag)
        (self._offset_etag,) = await store.commit_sql(sql.statements, [offsets])
        self.positions = self.committed_positions = positions
        self.applied += len(batch)
        self.last_error = None
        self.failures = 0
        self._release()

    def _sql_store(self) -> SqlTransactions:
        storage = self.service.storage
        if not isinstance(storage, SqlTransactions):
            raise ConfigurationError(
                f"projection {self.name} keeps its read model in SQL tables, which needs a "
                f"store on a SQL database (sqlite:/// or postgresql://); this cluster's is "
                f"{type(getattr(storage, 'inner', storage)).__name__}"
            )
        return storage

    def _release(self) -> None:
        still = []
        for token, waiter in self._waiters:
            if self._reached(token):
                if not waiter.done():
                    waiter.set_result(None)
            else:
                still.append((token, waiter))
        self._waiters = still
