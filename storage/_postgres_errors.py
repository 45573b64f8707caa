"""How ``PostgresStorage`` sorts asyncpg's errors (unreachable and worth retrying, refused by
the server, safe to run again) and words them for messages."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence

import asyncpg

from raygrain.actors import ActorId, StorageError
from raygrain.storage._pending import Pending
from raygrain.storage._redact import redacted

__all__ = [
    "BAD_INPUT",
    "RETRY_BATCH",
    "SERVER_ERROR",
    "UNREACHABLE",
    "describe",
    "safe",
    "write_error",
]

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


def write_error(provider: object, exc: BaseException, batch: Sequence[Pending]) -> StorageError:
    """The error for the writes of ``batch`` (each entry a write or an atomic group) that
    ``exc`` failed: refused by the server (nothing was written) or failed with the connection
    (outcome unknown)."""
    if len(batch) == 1:
        what = "the write of " + ", ".join(_named(w.actor_id) for w in batch[0].writes)
    else:
        what = f"a batch of {len(batch)} writes"
    if isinstance(exc, asyncpg.PostgresError) and not isinstance(
        exc, asyncpg.PostgresConnectionError
    ):
        # The server answered with an error: its transaction was rolled back.
        return StorageError(
            f"{provider!r} refused {what}; nothing was written: {describe(exc)}{_hint(exc)}"
        )
    why = "the committer was cancelled" if isinstance(exc, asyncio.CancelledError) else None
    return StorageError(
        f"{provider!r}: the connection failed during {what}, which may or "
        f"may not have committed (outcome unknown): {why or describe(exc)}"
    )


def _named(actor_id: ActorId) -> str:
    """An actor's name for a message, cut short (a key may be kilobytes long)."""
    text = str(actor_id)
    return text if len(text) <= 100 else f"{text[:80]}... ({len(actor_id.canonical())} bytes)"


def _hint(exc: BaseException) -> str:
    if isinstance(exc, asyncpg.exceptions.ProgramLimitExceededError) and "index row" in str(exc):
        # PostgreSQL's btree holds index entries up to about 2,700 bytes (after compression).
        return " (the actor's type name and key are too long for the primary key's index)"
    return ""
