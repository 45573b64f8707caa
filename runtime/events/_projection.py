"""``Projection``: a read model kept from the feeds of event-sourced actor types.

A projection is an actor (one per class, key ``"main"``) whose activation runs a catch-up loop
(``ProjectionRunner``, runtime/events/_runner.py): it reads each source category's feed after
its offset, hands every event to ``when(event, stored, rows)``, and commits the rows it changed
together with its new offsets in one atomic ``write_many``, so each event's effect lands exactly
once in the read model, even across crashes and handovers.

The runtime activates the projection on the silo that owns it on the ring (at start and on every
membership change), so it runs whether or not anyone calls it; a failed silo's projection comes
back on the new owner from its committed offsets.
"""

from __future__ import annotations

from typing import Any, ClassVar

from raygrain.actors import Actor, ActorKey, ConfigurationError, always_interleave
from raygrain.runtime.events._actor import EventSourcedActor
from raygrain.runtime.events._consistency import ReadResult, Written, as_token, wait_seconds
from raygrain.runtime.events._rows import Rows, check_row_key
from raygrain.runtime.events._runner import ProjectionRunner
from raygrain.runtime.events._sql import Sql
from raygrain.storage import StoredEvent

__all__ = ["PROJECTION_KEY", "Projection", "Rows", "Sql", "SqlProjection"]


PROJECTION_KEY = "main"


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
        check_row_key(runner.name, key)
        await runner.caught_up(as_token(after), wait_seconds(timeout))
        value, positions = await runner.read(key)
        return ReadResult(value, positions)

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
        await runner.caught_up(as_token(after), wait_seconds(timeout))
        return dict(runner.positions)

    async def row(self, key: ActorKey) -> Any:
        """The row ``key`` as applied (for a query method of a subclass; None if absent)."""
        runner = self._runner()
        check_row_key(runner.name, key)
        return await runner.row(key, None)

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
