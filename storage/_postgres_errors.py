"""How ``PostgresStorage`` sorts asyncpg's errors (unreachable and worth retrying, refused by
the server, safe to run again) and words them for messages."""

from __future__ import annotations

import asyncio
import re

import asyncpg

from raygrain.storage._redact import redacted

__all__ = ["BAD_INPUT", "RETRY_BATCH", "SERVER_ERROR", "UNREACHABLE", "describe", "safe"]

# Errors that mean "the server or the connection is not there (now)": worth retrying a read.
UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # "cannot switch to state N; another operation is in progress": a connection the server
    # dropped while the client was between operations on it (seen after a fast shutdown).
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up, query cancelled
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections
)
SERVER_ERROR: tuple[type[BaseException], ...] = (*UNREACHABLE, asyncpg.PostgresError)
# The server refused a statement for a value in it that it cannot hold (class 22, data
# exception: a NUL in text, ...; class 54: an index row over its size limit): nothing was
# committed, and the same statement without that value would go through.
BAD_INPUT: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.ProgramLimitExceededError,
)
# The server refused the whole statement before committing anything: safe to run it again.
RETRY_BATCH = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)


def safe(dsn: str) -> str:
    """The DSN without its password and options, for messages."""
    return re.split(r"[?#]", redacted(dsn), maxsplit=1)[0]


def describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
