"""The connection pool of ``PostgresStorage``: how it is made, and checked once it is."""

from __future__ import annotations

import asyncpg

from raygrain.actors import StorageError, StorageSchemaError
from raygrain.storage._postgres_errors import UNREACHABLE, describe
from raygrain.storage._postgres_schema import ensure_schema

__all__ = ["open_pool"]


async def open_pool(
    dsn: str,
    *,
    size: int,
    connect_timeout: float,
    command_timeout: float,
    statement_timeout: float,
    schema: str,
    name: str,
) -> asyncpg.Pool:
    """A pool on ``dsn`` whose schema is created or checked (``name``: the store, for
    messages). ``StorageError`` if the server cannot be reached (it may come back: a read
    retries), ``StorageSchemaError`` if it answered no (password, database, permissions,
    a newer schema): retrying will not help."""
    # min_size=0: no connection is opened before it is needed, and one that the server
    # dropped is replaced on the next acquire: the pool recovers from an outage by itself.
    pool = asyncpg.create_pool(
        dsn,
        min_size=0,
        max_size=size,
        timeout=connect_timeout,
        command_timeout=command_timeout,
        max_inactive_connection_lifetime=60.0,
        reset=_keep_session,
        server_settings={
            "application_name": "raygrain",
            "statement_timeout": str(int(statement_timeout * 1000)),
            # asyncpg prepares every statement; after five runs PostgreSQL may switch a
            # prepared statement to a generic plan, which knows nothing of the arrays'
            # sizes, and batches took twice as long with it (measured: 60 ms against 30 ms).
            "plan_cache_mode": "force_custom_plan",
        },
    )
    try:
        await pool
        async with pool.acquire() as connection:
            await ensure_schema(connection, schema, name)
    except BaseException as exc:
        _terminate(pool)
        if isinstance(exc, StorageError):
            raise
        if _refused_by_configuration(exc):
            raise StorageSchemaError(f"cannot use {name}: {describe(exc)}") from exc
        if isinstance(exc, UNREACHABLE):
            raise StorageError(f"cannot reach {name}: {describe(exc)}") from exc
        if isinstance(exc, asyncpg.PostgresError):
            raise StorageSchemaError(f"cannot use {name}: {describe(exc)}") from exc
        raise
    return pool


async def _keep_session(connection: asyncpg.Connection) -> None:
    """How a connection is reset on its way back to the pool: not at all. asyncpg's default
    sends a reset query (advisory unlock, close cursors, unlisten, reset settings): a second
    round trip for every batch and every read, behind the server's queue. This store leaves
    none of that on a session (its advisory lock is a transaction's; it sets nothing, listens
    to nothing, opens no cursor), and asyncpg still rolls back a transaction left open."""


def _refused_by_configuration(exc: BaseException) -> bool:
    """Whether connecting failed for a setting no retry will mend: one asyncpg refuses, or
    ``sslmode=require`` (or stricter) against a server without SSL."""
    return isinstance(exc, asyncpg.exceptions.ClientConfigurationError) or (
        isinstance(exc, ConnectionError) and "rejected SSL upgrade" in str(exc)
    )


def _terminate(pool: asyncpg.Pool) -> None:
    try:
        pool.terminate()
    except Exception:
        pass
