"""The state storage provider protocol: read, write and clear one record, guarded by ETags.

A record is an actor's encoded state and an opaque ETag that changes on every write. A writer
names the ETag it last saw; when the stored one differs, the write is refused with
``InconsistentStateError`` and nothing changes. That is what fences a stale duplicate
activation. ``clear`` leaves a tombstone (no data, a new ETag) so that fencing survives it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from raygrain.actors import ActorId

__all__ = [
    "QueuedWrites",
    "ReadsMany",
    "SqlStep",
    "StateRecord",
    "StateWrite",
    "StorageProvider",
    "TimedWrites",
    "WriteTimer",
    "read_many",
    "tell_written",
]

# One step of ``SqlTransactions.commit_sql``: a statement with its parameters, or a function
# given the store's own connection inside the transaction (SQLite: a ``sqlite3.Connection``,
# called on the writer's thread; PostgreSQL: an ``asyncpg.Connection``, its result awaited).
SqlStep = tuple[str, Sequence[Any]] | Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class StateRecord:
    """What a read finds: ``data`` None means no state (never written, or cleared);
    ``etag`` None means no record at all."""

    data: bytes | None
    etag: str | None


@dataclass(frozen=True, slots=True)
class StateWrite:
    """One record of an atomic multi-record write; ``data`` None clears the record."""

    actor_id: ActorId
    data: bytes | None
    expected_etag: str | None


@runtime_checkable
class StorageProvider(Protocol):
    """Where actor state lives. Every provider passes tests/storage/test_conformance.py."""

    async def read(self, actor_id: ActorId) -> StateRecord:
        """The record for ``actor_id`` (``StateRecord(None, None)`` when there is none)."""
        ...

    async def write(self, actor_id: ActorId, data: bytes, expected_etag: str | None) -> str:
        """Store ``data`` if the stored ETag is ``expected_etag``; return the new ETag."""
        ...

    async def clear(self, actor_id: ActorId, expected_etag: str | None) -> str:
        """Drop the state if the stored ETag is ``expected_etag``; return the tombstone's ETag."""
        ...

    async def write_many(self, writes: Sequence[StateWrite]) -> list[str]:
        """Apply every write or none: all ETags must match. Returns the new ETags in order."""
        ...

    async def aclose(self) -> None:
        """Release the provider's resources; further calls raise ``StorageError``."""
        ...


@runtime_checkable
class ReadsMany(Protocol):
    """Optional, for a provider that reads many records in one trip (one query, one hop to
    its thread): ``read_many`` below uses it. A projection meeting a thousand new rows under
    load read them one ``read`` each, a hop to SQLite's reader thread and back to the busy
    event loop for every row: 0.8-1.2 s for 1,500 rows, the wait of every read-your-writes
    query behind them."""

    async def read_many(self, actor_ids: Sequence[ActorId]) -> list[StateRecord]:
        """The records of ``actor_ids``, in their order (``StateRecord(None, None)`` for an
        absent one), as ``read`` would give each."""
        ...


async def read_many(provider: Any, actor_ids: Sequence[ActorId]) -> list[StateRecord]:
    """The records of ``actor_ids`` from ``provider``, in one trip when it ``ReadsMany``,
    else a ``read`` each, all under way at once."""
    reads_many = getattr(provider, "read_many", None)
    if reads_many is not None:
        return list(await reads_many(actor_ids))
    return list(await asyncio.gather(*(provider.read(actor_id) for actor_id in actor_ids)))


@runtime_checkable
class QueuedWrites(Protocol):
    """Optional, for a provider whose writes wait (group commit, a server): it takes a write
    with a callback instead of a coroutine. The runtime then ends a changing turn from that
    callback rather than keeping the turn's task suspended in ``write`` until the commit (on
    SQLite with 1,000 writers, that took about a quarter off the event loop's CPU per write)."""

    def queue_write(
        self,
        actor_id: ActorId,
        data: bytes,
        expected_etag: str | None,
        done: Callable[[str | Exception], object],
    ) -> None:
        """``write`` without awaiting: ``done`` gets the new ETag once the write is committed,
        or the error (``InconsistentStateError``, ``StorageError``), exactly once, on the event
        loop and never before this returns."""
        ...


class WriteTimer(Protocol):
    """Where the durations of queued writes go (metrics: ``TimedWrites``). Called on the event
    loop, before the writes' callbacks; what it raises goes to the loop's exception handler,
    and the writes are still told their outcomes."""

    def written(self, seconds: list[float]) -> None:
        """Writes committed, each taking these seconds from queued to committed (a batch's
        at a time)."""
        ...

    def failed(self, seconds: float, error: Exception) -> None:
        """A write failed with ``error`` after ``seconds``."""
        ...


@runtime_checkable
class TimedWrites(Protocol):
    """Optional, for a provider with ``queue_write``: a write queued with a timer that the
    provider tells how long the write took. Cheaper than timing through the callback (a
    wrapper per write, called per write): the provider times a whole batch at once."""

    def queue_timed_write(
        self,
        timer: WriteTimer,
        actor_id: ActorId,
        data: bytes,
        expected_etag: str | None,
        done: Callable[[str | Exception], object],
    ) -> None:
        """``queue_write``, telling ``timer`` the write's duration (or failure) before ``done``
        gets its outcome."""
        ...


@runtime_checkable
class SqlTransactions(Protocol):
    """Optional, for a provider on a SQL database: it runs a caller's own statements (on the
    caller's own tables in the same database) in the transaction that commits some records,
    all or nothing. ``SqlProjection`` commits its read-model rows this way, with its offsets.
    ``sql_dialect`` names the statements' dialect (``"sqlite"``: ``?`` parameters;
    ``"postgresql"``: ``$1``)."""

    sql_dialect: str

    async def commit_sql(
        self, statements: Sequence[SqlStep], writes: Sequence[StateWrite]
    ) -> list[str]:
        """Run ``statements`` in order and apply ``writes`` in one transaction; the writes'
        new ETags. A step that is a function is called with the store's connection, inside
        that transaction (see ``SqlStep``); what it raises rolls everything back and is
        raised here. A stale ETag raises ``InconsistentStateError`` and a failing statement
        ``StorageError``, and then nothing of it was committed."""
        ...


def tell_written(done: Callable[[str | Exception], object], outcome: str | Exception) -> None:
    """Give a ``queue_write`` callback its outcome, for a provider telling a whole batch: a
    callback that raises (the caller's bug) is reported to the event loop, and the rest of the
    batch is still told."""
    try:
        done(outcome)
    except Exception as exc:
        asyncio.get_running_loop().call_exception_handler(
            {"message": "a queued write's callback failed", "exception": exc}
        )
