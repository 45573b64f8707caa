"""The group commit of ``PostgresStorage``: taking a batch from the queue, the one statement that
applies a batch of conditional writes (the arrays it takes, the reading of its answer), and
running it on a connection, atomic groups and refused writers included.

Kept apart from the provider (storage/_postgres.py), which owns the pool, the queue and errors.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from raygrain.actors import ActorId, InconsistentStateError
from raygrain.storage._pending import Pending, PendingWrite, QueuedWrite
from raygrain.storage._postgres_errors import SERVER_ERROR
from raygrain.storage._provider import SqlStep, StateRecord, StateWrite

__all__ = [
    "MAX_BATCH_BYTES",
    "Outcome",
    "Statements",
    "apply_batch",
    "apply_with_statements",
    "fetch_records",
    "record_of",
    "take_batch",
]

Outcome = list[str] | InconsistentStateError

# The most bytes of state one batch carries: PostgreSQL refuses a message over 1 GB (closing the
# connection, which looked like an outage: "outcome unknown", for ever). A larger record goes
# in a batch of its own.
MAX_BATCH_BYTES = 64 * 1024 * 1024

_SELECT_RECORD = "SELECT version, data FROM {schema}.raygrain_state WHERE id = $1"
_SELECT_RECORDS = (
    "SELECT id, version, data FROM {schema}.raygrain_state WHERE id = ANY($1::bytea[])"
)
_SELECT_VERSIONS = "SELECT id, version FROM {schema}.raygrain_state WHERE id = ANY($1::bytea[])"
# One statement for a whole batch; it returns the records that lost their ETag check, usually
# none: a winner's new version is its expected one plus one (a record appears at most once in a
# batch), so the answer need not carry a row per write. (A loser's stored version is looked up
# afterwards: losers are rare.) An UPDATE that waits for another session's lock re-checks
# ``version = expected`` against the row that session committed, so two writers holding one
# ETag never both succeed.
_APPLY = """
WITH input AS (
    SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::text[], $4::text[], $5::bytea[])
        AS i(id, expected, type_name, actor_key, data)
), updated AS (
    UPDATE {schema}.raygrain_state s SET version = s.version + 1, data = i.data
    FROM input i WHERE i.expected > 0 AND s.id = i.id AND s.version = i.expected
    RETURNING s.id
), inserted AS (
    INSERT INTO {schema}.raygrain_state (id, version, type_name, actor_key, data)
    SELECT i.id, 1, i.type_name, i.actor_key, i.data FROM input i WHERE i.expected = 0
    ON CONFLICT (id) DO NOTHING
    RETURNING id
), won AS (
    SELECT id FROM updated UNION ALL SELECT id FROM inserted
)
SELECT i.id FROM input i WHERE NOT EXISTS (SELECT FROM won w WHERE w.id = i.id)
"""
# The same for a batch holding atomic groups ($6: each record's group, -1 for a lone write),
# in one round trip too: a group that matched only in part aborts the whole statement, hence
# its implicit transaction, with a division by zero (the one error plain SQL can raise; the
# divisor is computed per row so that the planner cannot fold it). The committer then runs
# the batch again in an explicit transaction and leaves the group out.
_APPLY_ATOMIC = (
    _APPLY.replace(
        "$5::bytea[])\n        AS i(id, expected, type_name, actor_key, data)",
        "$5::bytea[], $6::int[])\n        AS i(id, expected, type_name, actor_key, data, grp)",
    )
    + """UNION ALL
SELECT CASE WHEN 1 / (g.grp - g.grp) = 0 THEN NULL::bytea END FROM (
    SELECT i.grp FROM input i LEFT JOIN won w ON w.id = i.id WHERE i.grp >= 0
    GROUP BY i.grp HAVING count(w.id) > 0 AND count(w.id) < count(*)
) g
"""
)


@dataclass(frozen=True, slots=True)
class Statements:
    """The provider's statements, in its PostgreSQL schema."""

    read: str
    read_many: str
    versions: str
    apply: str
    apply_atomic: str

    @classmethod
    def in_schema(cls, quoted: str) -> Statements:
        """The statements on the tables of schema ``quoted`` (a quoted identifier)."""
        return cls(
            *(
                sql.replace("{schema}", quoted)
                for sql in (
                    _SELECT_RECORD,
                    _SELECT_RECORDS,
                    _SELECT_VERSIONS,
                    _APPLY,
                    _APPLY_ATOMIC,
                )
            )
        )


def record_of(row: Any) -> StateRecord:
    """A row of ``raygrain_state`` (version, data) as a record; None: no row."""
    if row is None:
        return StateRecord(None, None)
    data = row["data"]
    return StateRecord(None if data is None else bytes(data), str(row["version"]))


async def fetch_records(
    connection: asyncpg.Connection, sql: Statements, keys: list[bytes]
) -> list[StateRecord]:
    """The records of ``keys`` (canonical ids), in their order, in one query."""
    found = {bytes(row["id"]): row for row in await connection.fetch(sql.read_many, keys)}
    return [record_of(found.get(key)) for key in keys]


async def apply_batch(
    connection: asyncpg.Connection, sql: Statements, batch: list[Pending]
) -> list[Outcome]:
    """Commit what can be committed of ``batch``; the outcome of each entry, in order."""
    everything = list(range(len(batch)))
    outcomes: dict[int, Outcome] = {}
    losers: dict[int, StateWrite | QueuedWrite] = {}  # entry -> its first write refused
    atomic = any(len(p.writes) > 1 for p in batch)
    try:
        # One round trip, committed on its own; aborted if an atomic group matched in part.
        statement = sql.apply_atomic if atomic else sql.apply
        rows = await connection.fetch(statement, *_arrays(batch, groups=atomic))
    except asyncpg.exceptions.DivisionByZeroError:
        await _apply_in_transaction(connection, sql, batch, everything, outcomes, losers)
    else:
        decided, _, lost = _decide(batch, everything, rows)
        outcomes.update(decided)
        losers.update(lost)
    if losers:
        await _tell_stored_etags(connection, sql, outcomes, losers)
    return [outcomes[i] for i in everything]


async def apply_with_statements(
    connection: asyncpg.Connection,
    sql: Statements,
    statements: Sequence[SqlStep],
    writes: Sequence[StateWrite],
) -> list[str]:
    """One transaction holding ``writes`` (checked first: a stale ETag raises
    ``InconsistentStateError``) and ``statements`` (a caller's own SQL, on its own tables), all
    or nothing; the new ETags."""
    group = PendingWrite(tuple(writes), asyncio.get_running_loop().create_future())
    try:
        async with connection.transaction():
            if writes:
                lost = await connection.fetch(sql.apply_atomic, *_arrays([group], groups=True))
                if lost:
                    raise _Stale
            for step in statements:
                if callable(step):
                    done = step(connection)
                    if inspect.isawaitable(done):
                        await done
                else:
                    statement, parameters = step
                    await connection.execute(statement, *parameters)
    except (_Stale, asyncpg.exceptions.DivisionByZeroError):
        # (A group matched in part aborts the statement: the same refusal.)
        first = writes[0]
        raise InconsistentStateError(None, first.expected_etag, str(first.actor_id)) from None
    return [str(_version(write.expected_etag) + 1) for write in writes]


def take_batch(
    pending: deque[Pending], in_flight: set[ActorId], limit: int
) -> tuple[list[Pending], set[ActorId]]:
    """The front of the queue ``pending``, at most ``limit`` records (at least half the queue, so
    that the next batch gathers while this one commits), each record at most once and
    none in a batch still being committed: such a write waits for a later batch, which
    keeps every record's writes in queue order and batches in flight off each other's
    row locks. Returns the batch and its records."""
    batch: list[Pending] = []
    deferred: list[Pending] = []
    taken: set[ActorId] = set()  # the batch's records
    closed: set[ActorId] = set()  # records this batch can take no write of (taken too)
    if in_flight:
        closed.update(in_flight)
    size = 0
    nbytes = 0
    while pending and size < limit:
        head = pending.popleft()
        if type(head) is QueuedWrite:  # the common case, made cheap: one write
            key = head.actor_id
            if key in closed:
                deferred.append(head)
                continue
            if batch and (size + 1 > limit or nbytes + len(head.data) > MAX_BATCH_BYTES):
                pending.appendleft(head)
                break
            batch.append(head)
            taken.add(key)
            closed.add(key)
            size += 1
            nbytes += len(head.data)
            continue
        if head.dropped():
            continue
        ids = [w.actor_id for w in head.writes]
        more = sum(len(w.data or b"") for w in head.writes)
        if batch and (size + len(ids) > limit or nbytes + more > MAX_BATCH_BYTES):
            pending.appendleft(head)
            break
        if any(i in closed for i in ids):
            deferred.append(head)
            closed.update(ids)
            continue
        batch.append(head)
        taken.update(ids)
        closed.update(ids)
        size += len(ids)
        nbytes += more
    pending.extendleft(reversed(deferred))
    return batch, taken


class _Stale(Exception):
    """The writes lost their ETag check (rolls the transaction back)."""


async def _apply_in_transaction(
    connection: asyncpg.Connection,
    sql: Statements,
    batch: list[Pending],
    live: list[int],
    outcomes: dict[int, Outcome],
    losers: dict[int, StateWrite | QueuedWrite],
) -> None:
    """Commit the entries ``live`` of ``batch`` but the atomic groups that match only in
    part: the statement runs in a transaction that is rolled back, and run again without
    them, until every group left is whole."""
    while live:
        transaction = connection.transaction()
        await transaction.start()
        try:
            rows = await connection.fetch(sql.apply, *_arrays(batch[i] for i in live))
            decided, partial, lost = _decide(batch, live, rows)
            if partial:
                await transaction.rollback()
                for index in partial:  # refused; the others' checks are made afresh
                    outcomes[index] = decided[index]
                    losers[index] = lost[index]
                live = [i for i in live if i not in partial]
                continue
            await transaction.commit()
        except BaseException:
            if not transaction.is_completed():
                try:
                    await transaction.rollback()
                except SERVER_ERROR:
                    pass  # the connection is gone, and its transaction with it
            raise
        outcomes.update(decided)
        losers.update(lost)
        return


async def _tell_stored_etags(
    connection: asyncpg.Connection,
    sql: Statements,
    outcomes: dict[int, Outcome],
    losers: dict[int, StateWrite | QueuedWrite],
) -> None:
    """Give each refused writer the ETag stored now. The batch is committed already: if
    this lookup fails, the refusals stand with the stored ETag unknown (None)."""
    ids = [write.actor_id.canonical() for write in losers.values()]
    try:
        rows = await connection.fetch(sql.versions, ids)
    except SERVER_ERROR:
        return
    stored = {bytes(row["id"]): str(row["version"]) for row in rows}
    for index, write in losers.items():
        outcomes[index] = InconsistentStateError(
            stored.get(write.actor_id.canonical()), write.expected_etag, str(write.actor_id)
        )


def _arrays(entries: Any, groups: bool = False) -> list[list[Any]]:
    """The statement's arrays, one element per record; with ``groups``, a sixth: the index of
    each record's atomic group, -1 for a lone write."""
    ids: list[bytes] = []
    expected: list[int] = []
    type_names: list[str] = []
    keys: list[str] = []
    data: list[bytes | None] = []
    group: list[int] = []
    for index, pending in enumerate(entries):
        if groups:
            group.extend([index if len(pending.writes) > 1 else -1] * len(pending.writes))
        for write in pending.writes:
            ids.append(write.actor_id.canonical())
            version = _version(write.expected_etag)
            expected.append(version)
            # The names are written with a new row only: an update keeps the row's own.
            type_names.append("" if version else _printable(write.actor_id.type_name))
            keys.append("" if version else _printable(repr(write.actor_id.key)))
            data.append(write.data)
    return (
        [ids, expected, type_names, keys, data, group]
        if groups
        else [ids, expected, type_names, keys, data]
    )


def _version(etag: str | None) -> int:
    """The version an ETag names (0: no record). An ETag this store never gave out (not a
    positive integer) can match no record: -1 is refused by every row and every insert."""
    if etag is None:
        return 0
    try:
        version = int(etag)
    except ValueError:
        return -1
    return version if version > 0 and str(version) == etag else -1


def _decide(
    batch: list[Pending], live: list[int], rows: list[Any]
) -> tuple[dict[int, Outcome], set[int], dict[int, StateWrite | QueuedWrite]]:
    """Each live entry's outcome from the losers the statement returned; the atomic groups
    that only partly matched (whose writes must be rolled back); and each refused entry's first
    refused write (whose stored ETag is then looked up)."""
    lost = {bytes(row[0]) for row in rows}
    outcomes: dict[int, Outcome] = {}
    partial: set[int] = set()
    losers: dict[int, StateWrite | QueuedWrite] = {}
    for index in live:
        etags: list[str] = []
        refused: StateWrite | QueuedWrite | None = None
        for write in batch[index].writes:
            if not lost or write.actor_id.canonical() not in lost:
                etags.append(str(_version(write.expected_etag) + 1))  # (0: a new record)
            elif refused is None:
                refused = write
        if refused is None:
            outcomes[index] = etags
            continue
        outcomes[index] = InconsistentStateError(None, refused.expected_etag, str(refused.actor_id))
        losers[index] = refused
        if etags:
            partial.add(index)
    return outcomes, partial, losers


def _printable(text: str) -> str:
    # PostgreSQL text holds neither NUL nor lone surrogates, which an ActorId may contain (its
    # canonical bytes, the identity, keep them); these columns are only for reading.
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
