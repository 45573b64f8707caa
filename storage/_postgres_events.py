"""The event log of ``PostgresStorage`` (storage/_events.py).

PostgreSQL hands out sequence numbers at insert time, not at commit: with a bigserial, a reader
could see position 7 committed while position 6, taken earlier by a slower transaction, is still
in flight and appears later, behind the reader's back. So positions come from the category's row
in ``raygrain_event_heads`` instead: an append starts by bumping that row, which takes its row
lock until the transaction ends, and the next append of the category waits for it. Positions are
therefore handed out in commit order (and dense), at the price of one append transaction at a
time per category: the lock is held for the insert and the commit, a few milliseconds on a local
server. Appends to different categories do not wait for each other, and each append locks one
row only, so appends cannot deadlock.

An append is one transaction of four statements; a connection lost during it leaves its outcome
unknown, and the caller's retry with the same event ids returns what was stored, if anything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import asyncpg

from raygrain.actors import StorageError, decode
from raygrain.storage._events import (
    Appended,
    NewEvent,
    StoredEvent,
    check_append,
    check_category_read,
    check_stream_read,
    encoded_events,
    other_category,
    repeated,
    wrong_version,
)

__all__ = ["EVENT_TABLES", "PostgresEventLog"]

# A migration step (storage/_postgres_sql.py: MIGRATIONS).
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
# Takes the category's lock and reserves $2 positions; returns the new head.
_RESERVE = """
INSERT INTO {schema}.raygrain_event_heads AS h (category, head) VALUES ($1, $2)
ON CONFLICT (category) DO UPDATE SET head = h.head + excluded.head
RETURNING head
"""
# The stream's last event, and those of this append's ids that are stored already.
_STREAM_STATE = """
SELECT event_id, version, position, category FROM {schema}.raygrain_events
WHERE stream = $1 AND (
    event_id = ANY($2::text[])
    OR version = (SELECT max(version) FROM {schema}.raygrain_events WHERE stream = $1)
)
"""
_INSERT = """
INSERT INTO {schema}.raygrain_events
    (category, position, stream, version, type, event_id, recorded_at, data)
SELECT $1, $2 + n, $3, $4 + n, t, i, extract(epoch FROM clock_timestamp()), d
FROM unnest($5::text[], $6::text[], $7::bytea[]) WITH ORDINALITY AS e(t, i, d, n)
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


class _Refused(Exception):
    """Rolls the append's transaction back, carrying the outcome to report."""

    def __init__(self, outcome: Appended | Exception) -> None:
        super().__init__()
        self.outcome = outcome


class PostgresEventLog:
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

    async def append(
        self, stream: str, category: str, expected_version: int | None, events: Sequence[NewEvent]
    ) -> Appended:
        check_append(stream, category, expected_version, events)
        encoded = encoded_events(events)
        self._check_not_closed()
        await self.open()
        assert self._pool is not None
        ids = [event_id for _, _, event_id in encoded]
        try:
            async with self._pool.acquire(timeout=self._client_timeout) as connection:
                try:
                    async with connection.transaction():
                        head = await connection.fetchval(
                            self._event_sql(_RESERVE), category, len(encoded)
                        )
                        rows = await connection.fetch(self._event_sql(_STREAM_STATE), stream, ids)
                        found = {
                            r["event_id"]: (int(r["version"]), int(r["position"]))
                            for r in rows
                            if r["event_id"] in set(ids)
                        }
                        earlier = repeated(stream, ids, found)
                        if earlier is not None:
                            raise _Refused(earlier)
                        version = max((int(r["version"]) for r in rows), default=0)
                        for row in rows:
                            if row["category"] != category:
                                raise _Refused(other_category(stream, category, row["category"]))
                        if expected_version is not None and expected_version != version:
                            raise _Refused(wrong_version(stream, expected_version, version))
                        first = int(head) - len(encoded)
                        await connection.execute(
                            self._event_sql(_INSERT),
                            category,
                            first,
                            stream,
                            version,
                            [t for t, _, _ in encoded],
                            ids,
                            [d for _, d, _ in encoded],
                        )
                except _Refused as refused:
                    if isinstance(refused.outcome, Exception):
                        raise refused.outcome from None
                    return refused.outcome
        except (StorageError, _Refused):
            raise
        except asyncpg.PostgresError as exc:
            if not isinstance(exc, asyncpg.PostgresConnectionError):
                raise StorageError(
                    f"{self!r} refused the append to stream {stream!r}; nothing was appended: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            raise self._unknown(stream, exc) from exc
        except Exception as exc:
            if isinstance(exc, (OSError, TimeoutError, asyncpg.InterfaceError)):
                raise self._unknown(stream, exc) from exc
            raise
        return Appended(version + len(encoded), int(head))

    def _unknown(self, stream: str, exc: BaseException) -> StorageError:
        return StorageError(
            f"{self!r}: the connection failed during an append to stream {stream!r}, which may "
            f"or may not have committed (outcome unknown; retry with the same event ids): "
            f"{type(exc).__name__}: {exc}"
        )

    async def read_stream(
        self, stream: str, from_version: int = 1, limit: int | None = None
    ) -> list[StoredEvent]:
        check_stream_read(stream, from_version, limit)
        rows = await self._retrying(
            f"reading event stream {stream!r}",
            lambda c: c.fetch(self._event_sql(_READ_STREAM), stream, from_version, limit),
        )
        return [_stored(row) for row in rows]

    async def read_category(
        self, category: str, after_position: int = 0, limit: int = 1000
    ) -> list[StoredEvent]:
        check_category_read(category, after_position, limit)
        rows = await self._retrying(
            f"reading event category {category!r}",
            lambda c: c.fetch(self._event_sql(_READ_CATEGORY), category, after_position, limit),
        )
        return [_stored(row) for row in rows]

    async def head(self, category: str) -> int:
        head = await self._retrying(
            f"reading the head of event category {category!r}",
            lambda c: c.fetchval(self._event_sql(_HEAD), category),
        )
        return 0 if head is None else int(head)


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
