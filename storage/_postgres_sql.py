"""The SQL of ``PostgresStorage``: the schema and its migrations, and the one statement that
applies a batch of conditional writes (with the arrays it takes and the reading of its answer).

Kept apart from the provider (storage/_postgres.py), which owns connections, queueing and errors.
"""

from __future__ import annotations

from typing import Any

from raygrain.actors import InconsistentStateError
from raygrain.storage._pending import Pending, QueuedWrite
from raygrain.storage._postgres_events import EVENT_TABLES
from raygrain.storage._provider import StateWrite

__all__ = [
    "APPLY",
    "APPLY_ATOMIC",
    "CREATE_SCHEMA_TABLE",
    "MIGRATIONS",
    "SCHEMA_LOCK",
    "SCHEMA_VERSION",
    "SELECT_RECORD",
    "SELECT_VERSIONS",
    "Outcome",
    "arrays",
    "decide",
]

Outcome = list[str] | InconsistentStateError

# MIGRATIONS[n] takes the schema from version n to n + 1; each runs in the transaction that
# records the new version, under an advisory lock, so silos starting together apply it once.
# A capability that needs a table of its own (reminders, say) appends a step here.
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
    EVENT_TABLES,  # the event log (storage/_postgres_events.py)
]
SCHEMA_VERSION = len(MIGRATIONS)

SCHEMA_LOCK = 0x7267726E  # "rgrn": the advisory lock that serializes schema changes
CREATE_SCHEMA_TABLE = """
CREATE TABLE IF NOT EXISTS {schema}.raygrain_schema (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version   integer NOT NULL
)
"""
SELECT_RECORD = "SELECT version, data FROM {schema}.raygrain_state WHERE id = $1"
SELECT_VERSIONS = "SELECT id, version FROM {schema}.raygrain_state WHERE id = ANY($1::bytea[])"
# One statement for a whole batch; it returns the records that won their ETag check (a loser's
# stored version is looked up afterwards: losers are rare, and sparing every batch that lookup
# halves the rows it returns). An UPDATE that waits for another session's lock re-checks
# ``version = expected`` against the row that session committed, so two writers holding one
# ETag never both succeed.
APPLY = """
WITH input AS (
    SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::text[], $4::text[], $5::bytea[])
        AS i(id, expected, type_name, actor_key, data)
), updated AS (
    UPDATE {schema}.raygrain_state s SET version = s.version + 1, data = i.data
    FROM input i WHERE i.expected > 0 AND s.id = i.id AND s.version = i.expected
    RETURNING s.id, s.version
), inserted AS (
    INSERT INTO {schema}.raygrain_state (id, version, type_name, actor_key, data)
    SELECT i.id, 1, i.type_name, i.actor_key, i.data FROM input i WHERE i.expected = 0
    ON CONFLICT (id) DO NOTHING
    RETURNING id, version
)
SELECT id, version FROM updated UNION ALL SELECT id, version FROM inserted
"""
# The same for a batch holding atomic groups ($6: each record's group, -1 for a lone write),
# in one round trip too: a group that matched only in part aborts the whole statement, hence
# its implicit transaction, with a division by zero (the one error plain SQL can raise; the
# divisor is computed per row so that the planner cannot fold it). The committer then runs
# the batch again in an explicit transaction and leaves the group out.
APPLY_ATOMIC = APPLY.replace(
    "$5::bytea[])\n        AS i(id, expected, type_name, actor_key, data)",
    "$5::bytea[], $6::int[])\n        AS i(id, expected, type_name, actor_key, data, grp)",
).replace(
    "SELECT id, version FROM updated UNION ALL SELECT id, version FROM inserted",
    """, won AS (
    SELECT id, version FROM updated UNION ALL SELECT id, version FROM inserted
)
SELECT id, version FROM won
UNION ALL
SELECT NULL, 1 / (g.grp - g.grp) FROM (
    SELECT i.grp FROM input i LEFT JOIN won w ON w.id = i.id WHERE i.grp >= 0
    GROUP BY i.grp HAVING count(w.id) > 0 AND count(w.id) < count(*)
) g""",
)


def arrays(entries: Any, groups: bool = False) -> list[list[Any]]:
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


def decide(
    batch: list[Pending], live: list[int], rows: list[Any]
) -> tuple[dict[int, Outcome], set[int], dict[int, StateWrite | QueuedWrite]]:
    """Each live entry's outcome from the winners the statement returned; the atomic groups
    that only partly matched (whose writes must be rolled back); and each refused entry's first
    refused write (whose stored ETag is then looked up)."""
    won = {bytes(row["id"]): int(row["version"]) for row in rows}
    outcomes: dict[int, Outcome] = {}
    partial: set[int] = set()
    losers: dict[int, StateWrite | QueuedWrite] = {}
    for index in live:
        etags: list[str] = []
        refused: StateWrite | QueuedWrite | None = None
        for write in batch[index].writes:
            version = won.get(write.actor_id.canonical())
            if version is not None:
                etags.append(str(version))
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
