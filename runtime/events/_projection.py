"""``Projection``: a read model kept from the feeds of event-sourced actor types.

A projection is an actor (one per class, key ``"main"``) whose activation runs a catch-up loop:
it reads each source category's feed after its offset, hands every event to ``when(event,
stored, rows)``, and commits the rows it changed together with its new offsets in one atomic
``write_many``. The offset record's ETag fences a second owner: a duplicate activation during a
membership change fails its commit, reloads the committed offsets and goes on from there. So
each event's effect lands exactly once in the read model, even across crashes and handovers.

The runtime activates the projection on the silo that owns it on the ring (at start and on every
membership change), so it runs whether or not anyone calls it; a failed silo's projection comes
back on the new owner from its committed offsets.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Collection
from typing import Any, ClassVar, Protocol

from raygrain.actors import (
    Actor,
    ActorCallTimeout,
    ActorId,
    ActorKey,
    ConfigurationError,
    InconsistentStateError,
    SiloUnavailableError,
    always_interleave,
    decode,
    encode,
)
from raygrain.runtime.events._actor import EventSourcedActor
from raygrain.runtime.events._consistency import ReadResult, Token, Written, as_token
from raygrain.runtime.events._sql import Sql
from raygrain.runtime.kernel import Silo, get_logger
from raygrain.storage import (
    EventLog,
    SqlTransactions,
    StateWrite,
    StorageProvider,
    StoredEvent,
)

__all__ = ["PROJECTION_KEY", "Projection", "ProjectionRunner", "Rows", "Sql", "SqlProjection"]


class _Service(Protocol):
    """What a runner needs of the silo's events service (runtime/events/_extension.py), named
    here so that the runner does not import the service that imports it."""

    silo: Silo

    @property
    def log(self) -> EventLog: ...

    @property
    def storage(self) -> StorageProvider: ...


PROJECTION_KEY = "main"
OFFSET_TYPE = "raygrain.projection"
_DELETED = object()
_MAX_CACHED = 100_000
_LOADS_AT_ONCE = 256  # row reads a batch has under way at once
_RETRY_DELAY = 0.5
_HEADS_PERIOD = 1.0  # seconds between readings of the heads, for the lag metric


class Rows:
    """The read model's rows as one batch of events sees them: ``await rows.get(key)``,
    ``rows.put(key, value)``, ``rows.delete(key)``. Changes commit with the batch's offsets."""

    def __init__(self, runner: ProjectionRunner, probing: bool = False) -> None:
        self._runner = runner
        self.changes: dict[ActorKey, Any] = {}
        # A probing pass (see ProjectionRunner._apply) reads no row it has not loaded: it
        # notes the key and hands back the default, and its changes are thrown away.
        self.missed: set[ActorKey] | None = set() if probing else None

    async def get(self, key: ActorKey, default: Any = None) -> Any:
        if key in self.changes:
            value = self.changes[key]
            return default if value is _DELETED else decode(encode(value))
        if self.missed is not None and key not in self._runner.cache:
            self.missed.add(key)
            return default
        return await self._runner.committed(key, default)

    def put(self, key: ActorKey, value: Any) -> None:
        encode(value)  # an unencodable value fails here, in the handler, not at the commit
        self.changes[key] = value

    def delete(self, key: ActorKey) -> None:
        self.changes[key] = _DELETED


class Projection(Actor[None], idle_timeout=31_536_000.0):
    """Base class of projections: ``class Totals(Projection, sources=[Order])`` with
    ``async def when(self, event, stored, rows)``. ``sources``: the event-sourced actor classes
    (or category names) whose feeds it reads. Query it with ``read(key, after=...)`` through
    ``Totals.of(cluster)``; ``positions()`` and ``lag()`` say how far it is."""

    __projection_sources__: ClassVar[tuple[str, ...]] = ()
    __projection_events__: ClassVar[dict[str, type[EventSourcedActor[Any, Any]]]] = {}
    batch_size: ClassVar[int] = 2000
    poll_interval: ClassVar[float] = 0.05  # seconds between polls of an idle feed

    def __init_subclass__(cls, *, sources: Any = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if sources is None:
            return
        names: list[str] = []
        events: dict[str, type[EventSourcedActor[Any, Any]]] = {}
        for source in sources:
            if isinstance(source, type) and issubclass(source, EventSourcedActor):
                name = source.__actor_options__.name
                events[name] = source
            elif isinstance(source, str) and source:
                name = source
            else:
                raise ConfigurationError(
                    f"{cls.__qualname__}: a source is an EventSourcedActor class or a category "
                    f"name, got {source!r}"
                )
            names.append(name)
        if not names:
            raise ConfigurationError(f"{cls.__qualname__}: sources= names no feed")
        cls.__projection_sources__ = tuple(names)
        cls.__projection_events__ = events

    @classmethod
    def of(cls, actors: Any) -> Any:
        """The reference to this projection (``actors``: a cluster, or ``self.actors``)."""
        return actors.get(cls, PROJECTION_KEY)

    async def when(self, event: Any, stored: StoredEvent, rows: Rows) -> None:
        """Apply one event to the read model (``event`` upcast and built when its source is
        an ``EventSourcedActor`` class; ``stored.data`` otherwise)."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement when()")

    # -- queries -------------------------------------------------------------------------------

    @always_interleave
    async def read(
        self, key: ActorKey, after: Written | dict[str, int] | None = None, timeout: float = 10.0
    ) -> ReadResult:
        """The row ``key`` (None if absent). Eventual without ``after``; with a command's
        ``Written`` token or a session's positions, waits (up to ``timeout`` seconds) until the
        read model has applied them."""
        runner = self._runner()
        await runner.caught_up(as_token(after), timeout)
        positions = dict(runner.positions)  # before the read: never newer than the value
        return ReadResult(await runner.committed(key, None), positions)

    @always_interleave
    async def positions(self) -> dict[str, int]:
        """The last position applied of each source category."""
        return dict(self._runner().positions)

    @always_interleave
    async def lag(self) -> dict[str, int]:
        """How many events of each source category are not applied yet (head - position)."""
        return await self._runner().lag()

    @always_interleave
    async def caught_up(
        self, after: Written | dict[str, int] | None, timeout: float = 10.0
    ) -> dict[str, int]:
        """Wait until the read model has applied ``after`` (a command's ``Written`` token or a
        session's positions), up to ``timeout`` seconds; the positions applied by then."""
        runner = self._runner()
        await runner.caught_up(as_token(after), timeout)
        return dict(runner.positions)

    async def row(self, key: ActorKey) -> Any:
        """The committed row ``key`` (for a query method of a subclass; None if absent)."""
        return await self._runner().committed(key, None)

    def _runner(self) -> ProjectionRunner:
        runner: ProjectionRunner = self._context.service("events").runner()
        return runner


class SqlProjection(Projection):
    """A projection whose read model is the user's own tables, in the database the cluster
    stores its state in (``SqliteStorage`` or ``PostgresStorage``): ``async def when(self,
    event, stored, sql)`` records statements with ``sql.execute(...)`` (or functions of the
    store's connection with ``sql.run(...)``), and they commit in one transaction with the
    projection's offsets, so each event's effect lands exactly once.
    ``setup(sql)`` runs once per activation before the first batch (``CREATE TABLE IF NOT
    EXISTS ...``). Query the tables with your own connection; ``caught_up(after)`` waits for a
    command's ``Written`` token first (read-your-writes)."""

    def setup(self, sql: Sql) -> None:
        """Statements to run before the first batch (each activation): create the tables."""

    async def when(self, event: Any, stored: StoredEvent, sql: Sql) -> None:  # type: ignore[override]
        raise NotImplementedError(f"{type(self).__qualname__} must implement when()")

    @always_interleave
    async def read(
        self, key: ActorKey, after: Written | dict[str, int] | None = None, timeout: float = 10.0
    ) -> ReadResult:
        raise ConfigurationError(
            f"{type(self).__qualname__} keeps its read model in its own tables: query them "
            "with your own connection (after caught_up(written) for read-your-writes)"
        )


def row_id(projection: str, key: ActorKey) -> ActorId:
    return ActorId(f"raygrain.readmodel:{projection}", key)


class ProjectionRunner:
    """The catch-up loop of one projection activation, and the waiters on its progress."""

    def __init__(self, service: _Service, instance: Projection, name: str) -> None:
        self.service = service
        self.instance = instance
        self.name = name
        self.sources = type(instance).__projection_sources__
        self.positions: Token = dict.fromkeys(self.sources, 0)
        self.applied = 0  # events applied since this activation started
        self.heads: Token = {}  # each source category's head, as last read (every second)
        self._heads_read_at = -1.0
        self.last_error: str | None = None
        self._offset_etag: str | None = None
        self.cache: dict[ActorKey, tuple[bytes | None, str | None]] = {}
        self._waiters: list[tuple[Token, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._loaded = asyncio.Event()
        self._set_up = False  # SqlProjection.setup ran (once per activation)
        self._task: asyncio.Task[None] | None = None
        if not self.sources:
            raise ConfigurationError(f"projection {name}: declare its sources= (class keyword)")

    def start(self) -> None:
        self._task = self.service.silo.spawn(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for _, waiter in self._waiters:
            if not waiter.done():
                # A read: safe to retry, and the retry reaches the projection's new home.
                waiter.set_exception(
                    SiloUnavailableError(
                        f"projection {self.name} was deactivated (moved) while a read waited "
                        "for it; retry the read"
                    )
                )
        self._waiters.clear()

    def wake(self) -> None:
        self._wake.set()

    # -- progress ------------------------------------------------------------------------------

    def _reached(self, token: Token) -> bool:
        return self._loaded.is_set() and all(
            self.positions.get(c, p) >= p for c, p in token.items()
        )

    async def caught_up(self, token: Token, timeout: float) -> None:
        token = {c: p for c, p in token.items() if c in self.positions}  # others: not ours
        if self._loaded.is_set() and self._reached(token):
            return
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

    async def lag(self) -> dict[str, int]:
        log = self.service.log
        return {c: max(0, await log.head(c) - p) for c, p in self.positions.items()}

    def lag_events(self) -> dict[str, int]:
        """The lag as of the last reading of the heads (the metric; no I/O)."""
        return {c: max(0, self.heads.get(c, p) - p) for c, p in self.positions.items()}

    async def _read_heads(self) -> None:
        now = time.monotonic()
        if now - self._heads_read_at >= _HEADS_PERIOD:
            self._heads_read_at = now
            self.heads = {c: await self.service.log.head(c) for c in self.sources}

    async def committed(self, key: ActorKey, default: Any) -> Any:
        cached = self.cache.get(key)
        if cached is None:
            record = await self.service.storage.read(row_id(self.name, key))
            cached = self.cache.setdefault(key, (record.data, record.etag))
        return default if cached[0] is None else decode(cached[0])

    # -- the loop --------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                if not self._loaded.is_set():
                    await self._load_offsets()
                await self._read_heads()
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
            except InconsistentStateError:
                # Another owner committed: start again from what is stored.
                get_logger().info("projection_fenced", projection=self.name)
                self._forget()
            except Exception as exc:
                # A handler that raises (or a storage failure) stops the projection at that
                # batch; it is retried from the committed offsets until it goes through.
                self.last_error = repr(exc)
                get_logger().error("projection_failed", projection=self.name, error=repr(exc))
                self._forget()
                await asyncio.sleep(_RETRY_DELAY)

    def _forget(self) -> None:
        self.cache.clear()
        self._loaded.clear()

    async def _load_offsets(self) -> None:
        record = await self.service.storage.read(ActorId(OFFSET_TYPE, self.name))
        stored = decode(record.data) if record.data is not None else {}
        self.positions = {c: int(stored.get(c, 0)) for c in self.sources}
        self._offset_etag = record.etag
        self._loaded.set()
        self._release()

    async def _step(self) -> bool:
        progressed = False
        for category in self.sources:
            batch = await self.service.log.read_category(
                category, self.positions[category], self.instance.batch_size
            )
            if batch:
                await self._apply(category, batch)
                progressed = True
        return progressed

    async def _apply(self, category: str, batch: list[StoredEvent]) -> None:
        if isinstance(self.instance, SqlProjection):
            await self._apply_sql(self.instance, category, batch)
            return
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
            await self._load(rows.missed)
            rows = Rows(self)
            await self._handle(category, batch, rows)
        positions = {**self.positions, category: batch[-1].position}
        keys = list(rows.changes)
        await self._load([key for key in keys if key not in self.cache])  # their ETags
        writes = [StateWrite(ActorId(OFFSET_TYPE, self.name), encode(positions), self._offset_etag)]
        for key in keys:
            value = rows.changes[key]
            data = None if value is _DELETED else encode(value)
            writes.append(StateWrite(row_id(self.name, key), data, self.cache[key][1]))
        etags = await self.service.storage.write_many(writes)
        self._offset_etag = etags[0]
        if len(self.cache) > _MAX_CACHED:
            self.cache.clear()
        for key, write, etag in zip(keys, writes[1:], etags[1:], strict=True):
            self.cache[key] = (write.data, etag)
        self.positions = positions
        self.applied += len(batch)
        self.last_error = None
        self._release()

    async def _handle(self, category: str, batch: list[StoredEvent], rows: Rows) -> None:
        source = type(self.instance).__projection_events__.get(category)
        for stored in batch:
            event = source.__es_events__.build(stored, source.upcast) if source else stored.data
            handled = self.instance.when(event, stored, rows)
            if inspect.isawaitable(handled):
                await handled

    async def _load(self, keys: Collection[ActorKey]) -> None:
        """Read the committed rows of ``keys`` into the cache, ``_LOADS_AT_ONCE`` at a time."""
        pending = list(keys)
        for start in range(0, len(pending), _LOADS_AT_ONCE):
            chunk = pending[start : start + _LOADS_AT_ONCE]
            await asyncio.gather(*(self.committed(key, None) for key in chunk))

    def _sql_store(self) -> SqlTransactions:
        storage = self.service.storage
        if not isinstance(storage, SqlTransactions):
            raise ConfigurationError(
                f"projection {self.name} keeps its read model in SQL tables, which needs a "
                f"store on a SQL database (sqlite:/// or postgresql://); this cluster's is "
                f"{type(getattr(storage, 'inner', storage)).__name__}"
            )
        return storage

    async def _apply_sql(
        self, instance: SqlProjection, category: str, batch: list[StoredEvent]
    ) -> None:
        store = self._sql_store()
        if not self._set_up:
            setup = Sql(store.sql_dialect)
            instance.setup(setup)
            if setup.statements:
                await store.commit_sql(setup.statements, [])
            self._set_up = True
        sql = Sql(store.sql_dialect)
        source = type(instance).__projection_events__.get(category)
        for stored in batch:
            event = source.__es_events__.build(stored, source.upcast) if source else stored.data
            handled = instance.when(event, stored, sql)
            if inspect.isawaitable(handled):
                await handled
        positions = {**self.positions, category: batch[-1].position}
        offsets = StateWrite(ActorId(OFFSET_TYPE, self.name), encode(positions), self._offset_etag)
        (self._offset_etag,) = await store.commit_sql(sql.statements, [offsets])
        self.positions = positions
        self.applied += len(batch)
        self.last_error = None
        self._release()

    def _release(self) -> None:
        still = []
        for token, waiter in self._waiters:
            if self._reached(token):
                if not waiter.done():
                    waiter.set_result(None)
            else:
                still.append((token, waiter))
        self._waiters = still
