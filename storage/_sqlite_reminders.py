"""The reminder table of ``SqliteStorage``: one table beside the state, one trip per operation.

Rows carry the actor's ring hash (shifted into SQLite's signed 64-bit range, order kept) under
an index, so a silo reads the reminders of its ring ranges without scanning the rest. Writes run
on the state store's writer connection (its thread serializes them with the group commits);
reads on its reader. The table is created on open (``CREATE TABLE IF NOT EXISTS``), so a state
file from before reminders existed gains it without a schema version change.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Sequence
from typing import Any

from raygrain.actors import ActorId
from raygrain.storage._reminders import ReminderAck, ReminderRecord, stale

__all__ = ["REMINDER_SCHEMA", "ack", "remove", "select_in", "select_of", "upsert"]

_SHIFT = 2**63  # unsigned 64-bit hash -> signed, preserving order

REMINDER_SCHEMA = """
CREATE TABLE IF NOT EXISTS raygrain_reminders (
    id         BLOB NOT NULL,
    name       TEXT NOT NULL,
    ring       INTEGER NOT NULL,
    type_name  TEXT NOT NULL,
    key_kind   TEXT NOT NULL,
    actor_key  TEXT NOT NULL,
    first_tick REAL NOT NULL,
    period     REAL NOT NULL,
    etag       TEXT NOT NULL,
    last_tick  REAL,
    PRIMARY KEY (id, name)
);
CREATE INDEX IF NOT EXISTS raygrain_reminders_ring ON raygrain_reminders (ring);
"""
_COLUMNS = "type_name, key_kind, actor_key, name, first_tick, period, etag, last_tick"


def _record(row: Any) -> ReminderRecord:
    type_name, kind, key, name, first_tick, period, etag, last_tick = row
    actor_id = ActorId(type_name, int(key) if kind == "i" else key)
    return ReminderRecord(actor_id, name, first_tick, period, etag, last_tick)


def _transaction(connection: sqlite3.Connection) -> None:
    connection.execute("BEGIN IMMEDIATE")


def upsert(
    connection: sqlite3.Connection, actor_id: ActorId, name: str, first_tick: float, period: float
) -> ReminderRecord:
    etag = uuid.uuid4().hex[:16]
    kind = "i" if isinstance(actor_id.key, int) else "s"
    _transaction(connection)
    try:
        connection.execute(
            "INSERT INTO raygrain_reminders (id, name, ring, type_name, key_kind, actor_key,"
            " first_tick, period, etag, last_tick) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)"
            " ON CONFLICT (id, name) DO UPDATE SET first_tick = excluded.first_tick,"
            " period = excluded.period, etag = excluded.etag, last_tick = NULL",
            (
                actor_id.canonical(),
                name,
                actor_id.stable_hash() - _SHIFT,
                actor_id.type_name,
                kind,
                str(actor_id.key),
                first_tick,
                period,
                etag,
            ),
        )
        connection.execute("COMMIT")
    except BaseException:
        connection.rollback()
        raise
    return ReminderRecord(actor_id, name, first_tick, period, etag)


def remove(connection: sqlite3.Connection, actor_id: ActorId, name: str, etag: str | None) -> bool:
    key = (actor_id.canonical(), name)
    _transaction(connection)
    try:
        rows = connection.execute(
            "SELECT etag FROM raygrain_reminders WHERE id = ? AND name = ?", key
        ).fetchall()
        stored = rows[0][0] if rows else None
        if etag is not None and stored != etag:
            raise stale(actor_id, name, etag, stored)
        connection.execute("DELETE FROM raygrain_reminders WHERE id = ? AND name = ?", key)
        connection.execute("COMMIT")
    except BaseException:
        connection.rollback()
        raise
    return stored is not None


def select_of(connection: sqlite3.Connection, actor_id: ActorId) -> list[ReminderRecord]:
    rows = connection.execute(
        f"SELECT {_COLUMNS} FROM raygrain_reminders WHERE id = ? ORDER BY name",
        (actor_id.canonical(),),
    )
    return [_record(row) for row in rows]


def select_in(
    connection: sqlite3.Connection, ranges: Sequence[tuple[int, int]]
) -> list[ReminderRecord]:
    found: list[ReminderRecord] = []
    query = f"SELECT {_COLUMNS} FROM raygrain_reminders WHERE ring >= ? AND ring <= ?"
    for low, high in ranges:  # (low, high]: low may be -1, which has no signed counterpart
        bounds = (low + 1 - _SHIFT, high - _SHIFT)
        found.extend(_record(row) for row in connection.execute(query, bounds))
    return found


def ack(connection: sqlite3.Connection, acks: Sequence[ReminderAck]) -> None:
    _transaction(connection)
    try:
        connection.executemany(
            "UPDATE raygrain_reminders SET last_tick = ? WHERE id = ? AND name = ? AND etag = ?"
            " AND (last_tick IS NULL OR last_tick < ?)",
            [(a.tick, a.actor_id.canonical(), a.name, a.etag, a.tick) for a in acks],
        )
        connection.execute("COMMIT")
    except BaseException:
        connection.rollback()
        raise
