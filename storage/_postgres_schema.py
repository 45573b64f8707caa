"""The schema of ``PostgresStorage``: its tables, as numbered migrations, and the check made on
every open (create what is missing, upgrade an older schema, refuse a newer one).

Kept apart from the provider (storage/_postgres.py), which owns the pool, the queue and errors.
"""

from __future__ import annotations

import asyncpg

from raygrain.actors import StorageSchemaError
from raygrain.storage._postgres_events import EVENT_TABLES
from raygrain.storage._postgres_reminders import REMINDER_MIGRATION

__all__ = ["MIGRATIONS", "SCHEMA_LOCK", "SCHEMA_VERSION", "ensure_schema"]

# MIGRATIONS[n] takes the schema from version n to n + 1; each runs in the transaction that
# records the new version, under an advisory lock, so silos starting together apply it once.
# A capability that needs a table of its own appends a step here.
MIGRATIONS: list[str] = [
    # ``version`` is the ETag: it grows by one on every write and a record is never deleted
    # (``data`` NULL is a tombstone), so an ETag is never reused. ``id`` is
    # ActorId.canonical(); ``type_name`` and ``actor_key`` are for humans browsing the table.
    # fillfactor leaves room on each page so that an update can stay on its page (HOT).
    """
    CREATE TABLE {schema}.raygrain_state (
        id        bytea PRIMARY KEY,
        version   bigint NOT NULL,
        type_name text NOT NULL,
        actor_key text NOT NULL,
        data      bytea
    ) WITH (fillfactor = 80)
    """,
    EVENT_TABLES,  # 2: the event log (storage/_postgres_events.py)
    REMINDER_MIGRATION,  # 3: the reminder table (storage/_postgres_reminders.py)
]
SCHEMA_VERSION = len(MIGRATIONS)

SCHEMA_LOCK = 0x7267726E  # "rgrn": the advisory lock that serializes schema changes
_CREATE_SCHEMA_TABLE = """
CREATE TABLE IF NOT EXISTS {schema}.raygrain_schema (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version   integer NOT NULL
)
"""


async def ensure_schema(connection: asyncpg.Connection, schema: str, store: str) -> None:
    """Create or upgrade the tables of PostgreSQL schema ``schema`` (created if missing) to
    ``SCHEMA_VERSION``; ``StorageSchemaError`` if they are newer. ``store`` names the store in
    messages."""
    quoted = quote(schema)
    async with connection.transaction():
        # Silos start together: one of them creates or upgrades, the others wait and see it.
        await connection.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
        # DDL only when something is missing: an application's role may well lack the
        # CREATE privilege on a schema that an administrator set up for it.
        table = f"{quoted}.raygrain_schema"
        if await connection.fetchval("SELECT to_regclass($1)", table) is None:
            if not await connection.fetchval(
                "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)", schema
            ):
                await connection.execute(f"CREATE SCHEMA {quoted}")
            await connection.execute(_CREATE_SCHEMA_TABLE.replace("{schema}", quoted))
        version = await connection.fetchval(f"SELECT version FROM {quoted}.raygrain_schema")
        version = 0 if version is None else int(version)
        if version > SCHEMA_VERSION:
            raise StorageSchemaError(
                f"{store} has state schema version {version}, newer than version "
                f"{SCHEMA_VERSION} that this raygrain supports; upgrade raygrain to use it"
            )
        for step in MIGRATIONS[version:]:
            await connection.execute(step.replace("{schema}", quoted))
        if version < SCHEMA_VERSION:
            await connection.execute(
                f"INSERT INTO {quoted}.raygrain_schema (version) VALUES ($1)"
                " ON CONFLICT (singleton) DO UPDATE SET version = excluded.version",
                SCHEMA_VERSION,
            )


def quote(schema: str) -> str:
    """``schema`` as a quoted SQL identifier."""
    return '"' + schema.replace('"', '""') + '"'
