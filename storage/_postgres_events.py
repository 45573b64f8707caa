"""The event log of ``PostgresStorage`` (storage/_events.py), with group commit of its own.

PostgreSQL hands out sequence numbers at insert time, not at commit: with a bigserial, a reader
could see position 7 committed while position 6, taken earlier by a slower transaction, is still
in flight and appears later, behind the reader's back. So positions come from the category's row
in ``raygrain_event_heads`` instead: an append transaction starts by locking the rows of its
categories (``FOR UPDATE``, in category order, so two transactions never wait for each other in
a circle) and holds them to its commit; the next transaction of those categories waits. Positions
are therefore handed out in commit order (and dense), at the price of one append transaction at
a time per category across the cluster.

That price is paid per batch, not per append: appends are queued, and one committer task per
process takes everything pending into one transaction (lock the heads, read the streams' tails,
look up event ids only where an append did not find its stream where it expected, insert every
row in one statement, move the heads, commit), about eight round trips for hundreds of appends.
Each append is checked on its own; a refused one fails alone, and so does one the server cannot
store (a stream name over the index's size limit: the batch, refused whole, runs again append by
append). Names are PostgreSQL ``text``, which holds no NUL and no lone surrogate: an append
naming one is refused with ``InvalidEventError`` before it is queued, and a read of such a
stream finds it empty (nothing can be stored under it). A connection lost during the commit
leaves the batch's outcome unknown: the callers' retries with the same event ids return what
was stored, if anything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import asyncpg

from raygrain.actors import InvalidEventError, StorageError, decode
from raygrain.storage._event_appends import AppendQueue, PendingAppend, settle
from raygrain.storage._events import (
    Appended,
    StoredEvent,
    check_category_read,
    check_stream_read,
    other_category,
    repeated,
    wrong_version,
)
from raygrain.storage._postgres_errors import BAD_INPUT, SERVER_ERROR, UNREACHABLE, describe

__all__ = ["EVENT_TABLES", "PostgresEventLog"]

# A migration step (storage/_postgres_schema.py: MIGRATIONS).
EVENT_TABLES = """
CREATE TABLE {schema}.raygrain_events (
    category    text NOT NULL,
    position    bigint NOT NULL,
    stream      text NOT NULL,
    version     bigint NOT NULL,
    type        text NOT NULL,
    event_id    text NOT NULL,
    recorded_at double precision NOT NULL,
    data        bytea NOT NULL,
    PRIMARY KEY (category, position),
    UNIQUE (stream, version),
    UNIQUE (stream, event_id)
);
CREATE TABLE {schema}.raygrain_event_heads (
    category text PRIMARY KEY,
    head     bigint NOT NULL
);
"""
_COLUMNS = "stream, category, version, position, type, data, event_id, recorded_at"
_ENSURE_HEADS = """
INSERT INTO {schema}.raygrain_event_heads (category, head)
SELECT unnest($1::text[]), 0 ON CONFLICT (category) DO NOTHING
"""
_LOCK_HEADS = """
SELECT category, head FROM {schema}.raygrain_event_heads
WHERE category = ANY($1::text[]) ORDER BY category FOR UPDATE
"""
_TAILS = """
SELECT DISTINCT ON (stream) stream, category, version FROM {schema}.raygrain_events
WHERE stream = ANY($1::text[]) ORDER BY stream, version DESC
"""
_IDS = """
SELECT e.stream, e.event_id, e.version, e.position FROM {schema}.raygrain_events e
JOIN unnest($1::text[], $2::text[]) AS w(stream, event_id)
    ON e.stream = w.stream AND e.event_id = w.event_id
"""
_INSERT = """
INSERT INTO {schema}.raygrain_events
    (category, position, stream, version, type, event_id, recorded_at, data)
SELECT c, p, s, v, t, i, extract(epoch FROM clock_timestamp()), d
FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::text[], $6::text[],
            $7::bytea[]) AS e(c, p, s, v, t, i, d)
"""
_MOVE_HEADS = """
UPDATE {schema}.raygrain_event_heads h SET head = u.head
FROM unnest($1::text[], $2::bigint[]) AS u(category, head) WHERE h.category = u.category
"""
_READ_STREAM = (
    f"SELECT {_COLUMNS} FROM {{schema}}.raygrain_events WHERE stream = $1 AND version >= $2"
    " ORDER BY version LIMIT $3"
)
_READ_CATEGORY = (
    f"SELECT {_COLUMNS} FROM {{schema}}.raygrain_events WHERE category = $1 AND position > $2"
    " ORDER BY position LIMIT $3"
)
_HEAD = "SELECT head FROM {schema}.raygrain_event_heads WHERE category = $1"


_NO_CONNECTION: tuple[type[BaseException], ...] = (StorageError, *SERVER_ERROR)
_RETRIES = 5  # a batch the server refused whole (deadlock, serialization) is sent again
_RETRY_WHOLE = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)


class PostgresEventLog(AppendQueue):
    """The ``EventLog`` methods of ``PostgresStorage`` (a base class of it)."""

    if TYPE_CHECKING:  # provided by PostgresStorage
        _pool: asyncpg.Pool | None
        _quoted_schema: str

        @property
        def _client_timeout(self) -> float: ...
        async def open(self) -> None: ...
        def _check_not_closed(self) -> None: ...
        async def _retrying(
            self, doing: str, query: Callable[[asyncpg.Connection], Any]
        ) -> Any: ...

    def _event_sql(self, sql: str) -> str:
        return sql.replace("{schema}", self._quoted_schema)

    _checks_names = True

    def _check_names(
        self, stream: str, category: str, encoded: Sequence[tuple[str, bytes, str]]
    ) -> None:
        names = [("name", stream), ("category", category)]
        for type_name, _, event_id in encoded:
            names += [("event type", type_name), ("event id", event_id)]
        for what, name in names:
            if isinstance(name, str) and not _storable(name):
                raise InvalidEventError(
                    f"stream {_short(stream)}: its {what} {_short(name)} holds a NUL or a lone "
                    "surrogate, which PostgreSQL text cannot store; nothing was appended"
                )

    async def _commit_batch(self, batch: list[PendingAppend]) -> None:
        try:
            outcomes = await self._apply_batch(batch)
        except BAD_INPUT:
            # The server refused the whole batch for a value it cannot store (a stream name
            # over the index's size limit, ...): nothing was appended, so each half runs
            # again on its own, down to the bad append, which fails alone (see
            # PostgresStorage._commit).
            half = len(batch) // 2
            await self._commit_batch(batch[:half])
            await self._commit_batch(batch[half:])
            return
        except StorageError as exc:
            for pending in batch:
                settle(pending, StorageError(*exc.args))
            return
        for pending, outcome in zip(batch, outcomes, strict=True):
            settle(pending, outcome)

    async def _apply_batch(self, batch: list[PendingAppend]) -> list[Appended | Exception]:
        size = f"a batch of {len(batch)} event appends"
        try:
            if self._pool is None:  # (still there while aclose lets queued appends commit)
                await self.open()
            assert self._pool is not None
            pool = self._pool
            connection = await pool.acquire(timeout=self._client_timeout)
        except _NO_CONNECTION as exc:
            raise StorageError(f"{self!r} unreachable; {size} appended nothing: {exc}") from exc
        try:
            categories = sorted({a.category for a in batch})
            # New categories' rows, committed on their own (an autocommitted statement), so
            # that the transaction below only locks rows that exist, in category order.
            await connection.execute(self._event_sql(_ENSURE_HEADS), categories)
            look_up_all = False
            for attempt in range(_RETRIES):
                try:
                    async with connection.transaction():
                        return await self._decide_and_insert(
                            connection, batch, categories, look_up_all
                        )
                except asyncpg.UniqueViolationError:
                    look_up_all = True  # an event id stored long ago: look every id up
                except _RETRY_WHOLE:
                    if attempt + 1 == _RETRIES:
                        raise
            return await self._decide_and_insert(connection, batch, categories, True)
        except BAD_INPUT as exc:
            if len(batch) > 1:
                raise  # (_commit_batch runs each append alone)
            raise StorageError(
                f"{self!r} refused the append to stream {_short(batch[0].stream)}; nothing was "
                f"appended: {describe(exc)}"
            ) from exc
        except asyncpg.PostgresError as exc:
            if isinstance(exc, asyncpg.PostgresConnectionError):
                connection.terminate()
                raise self._unknown(size, exc) from exc
            raise StorageError(
                f"{self!r} refused {size}; nothing was appended: {type(exc).__name__}: {exc}"
            ) from exc
        except UNREACHABLE as exc:
            connection.terminate()  # (a timed-out or broken connection: see PostgresStorage._once)
            raise self._unknown(size, exc) from exc
        finally:
            await pool.release(connection)

    async def _decide_and_insert(
        self,
        connection: asyncpg.Connection,
        batch: list[PendingAppend],
        categories: list[str],
        look_up_all: bool,
    ) -> list[Appended | Exception]:
        sql = self._event_sql
        heads = {
            r["category"]: int(r["head"])
            for r in await connection.fetch(sql(_LOCK_HEADS), categories)
        }
        streams = list({a.stream for a in batch})
        tails = {
            r["stream"]: (r["category"], int(r["version"]))
            for r in await connection.fetch(sql(_TAILS), streams)
        }
        # Ids need looking up only where an append does not find its stream where it expected
        # it (a retry whose first attempt was stored moved it on), or expects nothing.
        wanted = [
            (a.stream, event_id)
            for a in batch
            if look_up_all
            or a.expected_version is None
            or a.expected_version != tails.get(a.stream, ("", 0))[1]
            for _, _, event_id in a.events
        ]
        stored: dict[tuple[str, str], tuple[int, int]] = {}
        if wanted:
            rows = await connection.fetch(sql(_IDS), [w[0] for w in wanted], [w[1] for w in wanted])
            stored = {
                (r["stream"], r["event_id"]): (int(r["version"]), int(r["position"])) for r in rows
            }
        outcomes, columns, moved = _decide(batch, heads, tails, stored)
        if columns[0]:
            await connection.execute(sql(_INSERT), *columns)
            await connection.execute(sql(_MOVE_HEADS), list(moved), list(moved.values()))
        return outcomes

    def _unknown(self, what: str, exc: BaseException) -> StorageError:
        return StorageError(
            f"{self!r}: the connection failed during {what}, which may or may not have "
            f"committed (outcome unknown; retry with the same event ids): "
            f"{type(exc).__name__}: {exc}"
        )

    async def read_stream(
        self, stream: str, from_version: int = 1, limit: int | None = None
    ) -> list[StoredEvent]:
        check_stream_read(stream, from_version, limit)
        if isinstance(stream, str) and not _storable(stream):
            return []  # no event can be stored under it
        rows = await self._retrying(
            f"reading event stream {stream!r}",
            lambda c: c.fetch(self._event_sql(_READ_STREAM), stream, from_version, limit),
        )
        return [_stored(row) for row in rows]

    async def read_category(
        self, category: str, after_position: int = 0, limit: int = 1000
    ) -> list[StoredEvent]:
        check_category_read(category, after_position, limit)
        if isinstance(category, str) and not _storable(category):
            return []
        rows = await self._retrying(
            f"reading event category {category!r}",
            lambda c: c.fetch(self._event_sql(_READ_CATEGORY), category, after_position, limit),
        )
        return [_stored(row) for row in rows]

    async def head(self, category: str) -> int:
        if isinstance(category, str) and not _storable(category):
            return 0
        head = await self._retrying(
            f"reading the head of event category {category!r}",
            lambda c: c.fetchval(self._event_sql(_HEAD), category),
        )
        return 0 if head is None else int(head)


def _decide(
    batch: list[PendingAppend],
    heads: dict[str, int],
    tails: dict[str, tuple[str, int]],
    stored: dict[tuple[str, str], tuple[int, int]],
) -> tuple[list[Appended | Exception], list[list[Any]], dict[str, int]]:
    """Check each append in queue order, as if they committed one by one; the rows to insert
    (as the insert's columns) and the heads they move."""
    outcomes: list[Appended | Exception] = []
    columns: list[list[Any]] = [[], [], [], [], [], [], []]
    category_col, position_col, stream_col, version_col, type_col, id_col, data_col = columns
    moved: dict[str, int] = {}
    for append in batch:
        stream, category = append.stream, append.category
        ids = [event_id for _, _, event_id in append.events]
        found = {i: stored[(stream, i)] for i in ids if (stream, i) in stored}
        try:
            earlier = repeated(stream, ids, found)
        except InvalidEventError as exc:
            outcomes.append(exc)
            continue
        if earlier is not None:
            outcomes.append(earlier)
            continue
        stored_category, version = tails.get(stream, (category, 0))
        if stored_category != category:
            outcomes.append(other_category(stream, category, stored_category))
            continue
        if append.expected_version is not None and append.expected_version != version:
            outcomes.append(wrong_version(stream, append.expected_version, version))
            continue
        position = heads[category]
        for type_, data, event_id in append.events:
            version += 1
            position += 1
            category_col.append(category)
            position_col.append(position)
            stream_col.append(stream)
            version_col.append(version)
            type_col.append(type_)
            id_col.append(event_id)
            data_col.append(data)
            stored[(stream, event_id)] = (version, position)  # a repeat later in the batch
        tails[stream] = (category, version)
        heads[category] = moved[category] = position
        outcomes.append(Appended(version, position))
    return outcomes, columns, moved


def _storable(name: str) -> bool:
    """Whether PostgreSQL text can hold ``name`` (no NUL, no lone surrogate)."""
    if "\x00" in name:
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _short(name: str) -> str:
    """``name`` for a message, cut short (a stream name may be kilobytes long)."""
    return repr(name) if len(name) <= 100 else f"{name[:80]!r}... ({len(name)} characters)"


def _stored(row: Any) -> StoredEvent:
    return StoredEvent(
        row["stream"],
        row["category"],
        int(row["version"]),
        int(row["position"]),
        row["type"],
        decode(bytes(row["data"])),
        row["event_id"],
        float(row["recorded_at"]),
    )
