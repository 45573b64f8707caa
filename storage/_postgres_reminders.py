"""The reminder table of ``PostgresStorage``: one table beside the state (schema step 2 in
storage/_postgres_schema.py), one round trip per operation.

Rows carry the actor's ring hash (shifted into PostgreSQL's signed ``bigint``, order kept) under
an index, so a silo reads the reminders of its ring ranges with one index range scan per range,
never the whole table. The actor's type name and key and the reminder's name are stored as UTF-8
bytes (``bytea``), not text: a Python string may hold a NUL or a lone surrogate, which
PostgreSQL text cannot, and a reminder must give back exactly the actor and name it was given.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from raygrain.actors import ActorId
from raygrain.storage._reminders import ReminderAck, ReminderRecord, stale

__all__ = ["REMINDER_MIGRATION", "ReminderStatements"]

_SHIFT = 2**63  # unsigned 64-bit hash -> signed, preserving order

REMINDER_MIGRATION = """
CREATE TABLE {schema}.raygrain_reminders (
    id         bytea NOT NULL,
    name       bytea NOT NULL,
    ring       bigint NOT NULL,
    type_name  bytea NOT NULL,
    key_kind   text NOT NULL,
    actor_key  bytea NOT NULL,
    first_tick double precision NOT NULL,
    period     double precision NOT NULL,
    etag       text NOT NULL,
    last_tick  double precision,
    PRIMARY KEY (id, name)
);
CREATE INDEX raygrain_reminders_ring ON {schema}.raygrain_reminders (ring);
"""

_COLUMNS = "type_name, key_kind, actor_key, name, first_tick, period, etag, last_tick"
_UPSERT = """
INSERT INTO {schema}.raygrain_reminders
    (id, name, ring, type_name, key_kind, actor_key, first_tick, period, etag, last_tick)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL)
ON CONFLICT (id, name) DO UPDATE SET first_tick = excluded.first_tick,
    period = excluded.period, etag = excluded.etag, last_tick = NULL
"""
# Without an ETag ($3 NULL) any registration goes; with one, only that one. A refused removal
# then looks up what is stored, for the error's words (removed, or registered again).
_REMOVE = """
DELETE FROM {schema}.raygrain_reminders
WHERE id = $1 AND name = $2 AND ($3::text IS NULL OR etag = $3)
RETURNING etag
"""
_ETAG = "SELECT etag FROM {schema}.raygrain_reminders WHERE id = $1 AND name = $2"
_OF = f"SELECT {_COLUMNS} FROM {{schema}}.raygrain_reminders WHERE id = $1 ORDER BY name"
# One index range scan per range (LATERAL), whatever the planner thinks of the arrays.
_IN = f"""
SELECT {_COLUMNS} FROM unnest($1::bigint[], $2::bigint[]) AS q(low, high)
CROSS JOIN LATERAL (
    SELECT * FROM {{schema}}.raygrain_reminders r WHERE r.ring BETWEEN q.low AND q.high
) r
"""
_ACK = """
UPDATE {schema}.raygrain_reminders r SET last_tick = a.tick
FROM unnest($1::bytea[], $2::bytea[], $3::text[], $4::float8[]) AS a(id, name, etag, tick)
WHERE r.id = a.id AND r.name = a.name AND r.etag = a.etag
    AND (r.last_tick IS NULL OR r.last_tick < a.tick)
"""


class ReminderStatements:
    """The reminder table's operations on one connection, in one PostgreSQL schema."""

    def __init__(self, quoted_schema: str) -> None:
        def sql(text: str) -> str:
            return text.replace("{schema}", quoted_schema)

        self._upsert, self._remove, self._etag = sql(_UPSERT), sql(_REMOVE), sql(_ETAG)
        self._of, self._in, self._ack = sql(_OF), sql(_IN), sql(_ACK)

    async def upsert(
        self,
        connection: asyncpg.Connection,
        actor_id: ActorId,
        name: str,
        first_tick: float,
        period: float,
    ) -> ReminderRecord:
        etag = uuid.uuid4().hex[:16]
        await connection.execute(
            self._upsert,
            actor_id.canonical(),
            _utf8(name),
            actor_id.stable_hash() - _SHIFT,
            _utf8(actor_id.type_name),
            "i" if isinstance(actor_id.key, int) else "s",
            _utf8(str(actor_id.key)),
            first_tick,
            period,
            etag,
        )
        return ReminderRecord(actor_id, name, first_tick, period, etag)

    async def remove(
        self, connection: asyncpg.Connection, actor_id: ActorId, name: str, etag: str | None
    ) -> bool:
        key = (actor_id.canonical(), _utf8(name))
        if await connection.fetchval(self._remove, *key, etag) is not None:
            return True
        if etag is None:
            return False
        raise stale(actor_id, name, etag, await connection.fetchval(self._etag, *key))

    async def of(self, connection: asyncpg.Connection, actor_id: ActorId) -> list[ReminderRecord]:
        return [_record(row) for row in await connection.fetch(self._of, actor_id.canonical())]

    async def in_ranges(
        self, connection: asyncpg.Connection, ranges: Sequence[tuple[int, int]]
    ) -> list[ReminderRecord]:
        # (low, high] unsigned -> [low + 1, high] signed; low may be -1 (the ring's start).
        bounds = [(low + 1 - _SHIFT, high - _SHIFT) for low, high in ranges if low < high]
        if not bounds:
            return []
        lows, highs = (list(column) for column in zip(*bounds, strict=True))
        return [_record(row) for row in await connection.fetch(self._in, lows, highs)]

    async def ack(self, connection: asyncpg.Connection, acks: Sequence[ReminderAck]) -> None:
        # One row per registration (its latest tick): an UPDATE ... FROM that matched a row
        # twice would apply either value.
        latest: dict[tuple[bytes, bytes, str], float] = {}
        for a in acks:
            key = (a.actor_id.canonical(), _utf8(a.name), a.etag)
            latest[key] = max(a.tick, latest.get(key, a.tick))
        ids, names, etags = (list(column) for column in zip(*latest, strict=True))
        await connection.execute(self._ack, ids, names, etags, list(latest.values()))


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _record(row: Any) -> ReminderRecord:
    type_name = bytes(row["type_name"]).decode("utf-8", "surrogatepass")
    key_text = bytes(row["actor_key"]).decode("utf-8", "surrogatepass")
    actor_id = ActorId(type_name, int(key_text) if row["key_kind"] == "i" else key_text)
    name = bytes(row["name"]).decode("utf-8", "surrogatepass")
    return ReminderRecord(
        actor_id, name, row["first_tick"], row["period"], row["etag"], row["last_tick"]
    )
