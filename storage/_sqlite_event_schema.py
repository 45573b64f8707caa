"""The tables of ``SqliteStorage``'s event log, and the change of a file made before them.

A stream's events are found by following a chain, not through an index keyed by the stream:
each event row holds the position of its stream's previous event (``previous``; NULL for the
first), the index ``(category, previous)`` (unique: a stream's chain never forks) leads from
an event to the next, ``raygrain_event_streams`` holds each stream's head (category, version,
position) and ``raygrain_event_marks`` the position of every ``MARK_EVERY``-th version (1,
257, 513, ...), where a read of the stream from some version starts walking.

Why: an index keyed by (stream, version) takes each append at the end of its stream's range,
so a batch of appends to 1,000 streams wrote 1,000 pages of it once the streams had a page's
worth of events each; a batch's commit grew from 2 to about 37 ms (plain SQLite, 1,000 rows
a batch, fsync) and event appends through actors fell from 24,000 to 13,000 a second within
ten seconds of load. The chain index takes each batch near the end of the category's
positions (an event's previous event is a recent one), the heads are one row per stream, and
a batch writes a few dozen pages however long the streams grow. (stream, version) stays
unique: versions are handed out from the stream's head row, in the writer's transaction, and
the chain index refuses two events after the same one.

A file made before (an index on (stream, version), no ``previous``) is changed on open, in
one transaction that also sets its schema version (``MIGRATION``, ``CHAIN``;
storage/_sqlite_open.py).
"""

from __future__ import annotations

__all__ = ["CHAIN", "EVENT_SCHEMA", "MARK_EVERY", "MIGRATION", "READ_STREAM"]

MARK_EVERY = 256  # a stream's versions 1, 1 + MARK_EVERY, ... are marked

EVENT_SCHEMA = """
CREATE TABLE IF NOT EXISTS raygrain_events (
    category    TEXT NOT NULL,
    position    INTEGER NOT NULL,
    stream      TEXT NOT NULL,
    version     INTEGER NOT NULL,
    type        TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    data        BLOB NOT NULL,
    previous    INTEGER,
    -- (See CHAIN: a table changed from the old layout has no such constraint.)
    CONSTRAINT raygrain_events_chained CHECK (previous IS NOT NULL OR version = 1)
);
CREATE UNIQUE INDEX IF NOT EXISTS raygrain_events_feed ON raygrain_events (category, position);
-- Event ids come from a counter (runtime/events/_codec.py): keyed by the id first, each batch
-- inserts at the end of this index, touching a page or two, where (stream, event_id) touched a
-- page per stream (40% less time per event on a batch over 1,000 streams). Unique per pair
-- either way. A file made before keeps its old index until this replaces it.
CREATE UNIQUE INDEX IF NOT EXISTS raygrain_events_event_ids ON raygrain_events (event_id, stream);
DROP INDEX IF EXISTS raygrain_events_ids;
CREATE TABLE IF NOT EXISTS raygrain_event_heads (
    category TEXT PRIMARY KEY,
    head     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS raygrain_event_streams (
    stream   TEXT PRIMARY KEY,
    category TEXT NOT NULL,
    version  INTEGER NOT NULL,
    position INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS raygrain_event_marks (
    stream   TEXT NOT NULL,
    version  INTEGER NOT NULL,
    category TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (stream, version)
) WITHOUT ROWID;
"""

# After EVENT_SCHEMA, in the transaction that migrates a file made before the chain (or finds it
# done): the chain index, and the old index goes. A stream has one first event (previous NULL):
# a process of a raygrain older than the file's schema that had the file open before it changed
# appends rows with no previous position, which this index refuses once the stream has an
# event, instead of giving a stream two events of one version. (A table made with the chain
# also refuses a later event without its previous position by a CHECK constraint, free per row;
# SQLite cannot add that to a changed table. A trigger doing it, which files of schema version 2
# made on 2026-12-04 carry, cost about 1 us per event appended and guarded nothing more.)
CHAIN = [
    "CREATE UNIQUE INDEX IF NOT EXISTS raygrain_events_chain"
    " ON raygrain_events (category, previous)",
    "CREATE UNIQUE INDEX IF NOT EXISTS raygrain_events_first"
    " ON raygrain_events (stream) WHERE previous IS NULL",
    "DROP INDEX IF EXISTS raygrain_events_stream",
]

# A file made before the chain: its events' previous positions, found through its index on
# (stream, version); each stream's head (SQLite takes the bare columns from the row of max());
# the marks. Run in the transaction that checked the file still lacks the chain.
MIGRATION = [
    "ALTER TABLE raygrain_events ADD COLUMN previous INTEGER",
    "UPDATE raygrain_events SET previous = ("
    " SELECT earlier.position FROM raygrain_events AS earlier"
    " WHERE earlier.stream = raygrain_events.stream"
    " AND earlier.version = raygrain_events.version - 1)",
    "INSERT OR REPLACE INTO raygrain_event_streams (stream, category, version, position)"
    " SELECT stream, category, max(version), position FROM raygrain_events GROUP BY stream",
    "INSERT OR REPLACE INTO raygrain_event_marks (stream, version, category, position)"
    " SELECT stream, version, category, position FROM raygrain_events"
    f" WHERE version % {MARK_EVERY} = 1",
]

# One statement (one snapshot of the file): from the last mark at or below ?2, follow the chain
# while below ?3, and keep the events from version ?2 to ?3. ?1: the stream.
READ_STREAM = """
WITH RECURSIVE walk(category, position, version) AS (
    SELECT * FROM (
        SELECT category, position, version FROM raygrain_event_marks
        WHERE stream = ?1 AND version <= ?2 ORDER BY version DESC LIMIT 1
    )
    UNION ALL
    SELECT next.category, next.position, next.version
    FROM walk JOIN raygrain_events AS next
        ON next.category = walk.category AND next.previous = walk.position
    WHERE walk.version < ?3
)
SELECT e.stream, e.category, e.version, e.position, e.type, e.data, e.event_id, e.recorded_at
FROM walk JOIN raygrain_events AS e ON e.category = walk.category AND e.position = walk.position
WHERE walk.version BETWEEN ?2 AND ?3
ORDER BY walk.version
"""
