"""The event log of ``SqliteStorage`` (storage/_events.py), with group commit of its own.

Appends are queued, and one committer task applies everything pending in one transaction on
the store's writer connection (whose thread also runs the state's group commits, so the two
never write at once): each append is checked on its own (idempotency, category, expected
version) against what the file and the earlier appends of the batch left, and a refused one
fails alone. A category's positions come from its row in ``raygrain_event_heads``, and there is
one writer, so positions are handed out in commit order: a feed reader never sees a position
appear below one it has already read. Reads go through the reader connection (WAL: committed
data only). The tables are created on open (``CREATE TABLE IF NOT EXISTS``), like the
reminders', so a state file from before the event log gains them without a schema change.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from raygrain.actors import InvalidEventError, StorageError, decode
from raygrain.storage._event_appends import AppendQueue, PendingAppend, settle
from raygrain.storage._events import (
    Appended,
    StoredEvent,
    check_category_read,
    check_stream_read,
    other_category,
    repeated,
    wrong_version,
)
from raygrain.storage._sqlite_event_schema import MARK_EVERY, READ_STREAM

if TYPE_CHECKING:
    import aiosqlite

    from raygrain.storage._sqlite_batch import FileIdentity as _FileIdentity

__all__ = ["SqliteEventLog"]

_T = TypeVar("_T")

_COLUMNS = "stream, category, version, position, type, data, event_id, recorded_at"
_INSERT = (
    "INSERT INTO raygrain_events (category, position, stream, version, type, event_id,"
    " recorded_at, data, previous) VALUES {}"
)
_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?)"
_ROW_VALUES = 9
_UPSERT_HEADS = (
    "INSERT INTO raygrain_event_streams (stream, category, version, position) VALUES {}"
    " ON CONFLICT (stream) DO UPDATE SET version = excluded.version, position = excluded.position"
)
_HEAD_ROW = "(?, ?, ?, ?)"
_HEAD_VALUES = 4
# Rows per INSERT: 9 parameters a row, within the connection's limit on host parameters (999 on
# old builds, 32,766 since SQLite 3.32). Each statement is a trip into SQLite on which the writer
# thread lets go of the GIL, and under load it then waits for the busy event loop to hand it
# back: 60 rows a statement made a batch of 1,000 appends 17 such waits. The sizes below them are
# multiples of _ROWS_STEP and then powers of two (``_shapes``).
_MOST_ROWS_PER_INSERT = 512
_ROWS_STEP = 32  # (a power of two)
_MAX_KNOWN_STREAMS = 200_000
_Tail = tuple[str, int, int]  # a stream's head: (category, version, position)
_NO_TAIL: _Tail = ("", 0, 0)
_NO_LAST = 2**62  # (read_stream with no limit: no version is past it)


class SqliteEventLog(AppendQueue):
    """The ``EventLog`` methods of ``SqliteStorage`` (a base class of it)."""

    _known_tails: _KnownTails | None = None

    if TYPE_CHECKING:  # provided by SqliteStorage
        _reader: aiosqlite.Connection | None
        _writer: aiosqlite.Connection | None
        _file: _FileIdentity

        async def open(self) -> None: ...
        def _check_not_closed(self) -> None: ...
        async def _connect_writer(self) -> aiosqlite.Connection: ...
        def _error(self, doing: str, exc: BaseException) -> StorageError: ...
        async def _on_reader(
            self, doing: str, function: Callable[[sqlite3.Connection], _T]
        ) -> _T: ...
        async def _guarded(
            self,
            doing: str,
            connection: aiosqlite.Connection,
            function: Callable[[sqlite3.Connection], _T],
        ) -> _T: ...

    async def read_stream(
        self, stream: str, from_version: int = 1, limit: int | None = None
    ) -> list[StoredEvent]:
        check_stream_read(stream, from_version, limit)
        # (Bounded to what SQLite's integers hold; no version is past _NO_LAST.)
        first = min(from_version, _NO_LAST)
        last = _NO_LAST if limit is None else min(from_version + limit - 1, _NO_LAST)
        rows = await self._on_reader(
            f"reading event stream {stream!r}",
            lambda c: c.execute(READ_STREAM, (stream, first, last)).fetchall(),
        )
        return [_stored(row) for row in rows]

    async def read_category(
        self, category: str, after_position: int = 0, limit: int = 1000
    ) -> list[StoredEvent]:
        check_category_read(category, after_position, limit)
        query = (
            f"SELECT {_COLUMNS} FROM raygrain_events WHERE category = ? AND position > ?"
            " ORDER BY position LIMIT ?"
        )
        rows = await self._on_reader(
            f"reading event category {category!r}",
            lambda c: c.execute(query, (category, after_position, limit)).fetchall(),
        )
        return [_stored(row) for row in rows]

    async def head(self, category: str) -> int:
        rows = await self._on_reader(
            f"reading the head of event category {category!r}",
            lambda c: c.execute(
                "SELECT head FROM raygrain_event_heads WHERE category = ?", (category,)
            ).fetchall(),
        )
        return int(rows[0][0]) if rows else 0

    async def _commit_batch(self, batch: list[PendingAppend]) -> None:
        doing = f"appending a batch of {len(batch)} event appends"
        try:
            if self._reader is None:  # append does not open the file
                await self.open()
            if self._writer is None:  # dropped after a failed rollback: start afresh
                self._writer = await self._connect_writer()
            file = self._file
            if self._known_tails is None:
                self._known_tails = _KnownTails()
            known = self._known_tails
            outcomes = await self._guarded(
                doing, self._writer, lambda c: _apply(c, batch, file, known)
            )
        except BaseException as exc:
            error = exc if isinstance(exc, StorageError) else self._error(doing, exc)
            for pending in batch:
                # The outcome is unknown if the commit itself failed: a retry with the same
                # event ids tells.
                settle(pending, StorageError(*error.args))
            if not isinstance(exc, Exception):
                raise
            return
        for pending, outcome in zip(batch, outcomes, strict=True):
            settle(pending, outcome)


def _stored(row: Any) -> StoredEvent:
    stream, category, version, position, type_, data, event_id, recorded_at = row
    return StoredEvent(
        stream, category, version, position, type_, decode(bytes(data)), event_id, recorded_at
    )


class _KnownTails:
    """Each stream's (category, version, position) and each category's head as the writer connection
    left them, valid while no other connection has committed since (``PRAGMA data_version``,
    as ``SqliteStorage``'s known versions): spares a batch its per-append SELECTs, each a trip
    into SQLite on which the writer thread lets go of the GIL."""

    __slots__ = ("connection", "data_version", "heads", "tails")

    def __init__(self) -> None:
        self.connection: sqlite3.Connection | None = None
        self.data_version = -1
        self.tails: dict[str, _Tail] = {}
        self.heads: dict[str, int] = {}

    def check(self, connection: sqlite3.Connection) -> None:
        (data_version,) = connection.execute("PRAGMA data_version").fetchone()
        stale = connection is not self.connection or data_version != self.data_version
        if stale or len(self.tails) > _MAX_KNOWN_STREAMS:
            self.forget()
        self.connection, self.data_version = connection, data_version

    def forget(self) -> None:
        self.connection = None
        self.tails.clear()
        self.heads.clear()


def _apply(
    connection: sqlite3.Connection,
    batch: list[PendingAppend],
    file: _FileIdentity,
    known: _KnownTails,
) -> list[Appended | Exception]:
    """On the writer's thread: one transaction for the whole batch, and the check that it
    went to the file at the store's path before anyone is told. An event id stored earlier
    in a stream, which only the insert finds (the unique index refuses it), sends the batch
    again with every append's ids looked up first."""
    try:
        return _apply_once(connection, batch, file, known, look_up_ids=False)
    except sqlite3.IntegrityError:
        return _apply_once(connection, batch, file, known, look_up_ids=True)


def _apply_once(
    connection: sqlite3.Connection,
    batch: list[PendingAppend],
    file: _FileIdentity,
    known: _KnownTails,
    look_up_ids: bool,
) -> list[Appended | Exception]:
    connection.execute("BEGIN IMMEDIATE")
    try:
        known.check(connection)
        outcomes, values, heads, tails, marks = _decide(connection, batch, known, look_up_ids)
        _insert(connection, _INSERT, _ROW, _ROW_VALUES, values)
        _insert(
            connection,
            _UPSERT_HEADS,
            _HEAD_ROW,
            _HEAD_VALUES,
            [v for stream, tail in tails.items() for v in (stream, *tail)],
        )
        if marks:
            connection.executemany(
                "INSERT INTO raygrain_event_marks (stream, version, category, position)"
                " VALUES (?, ?, ?, ?)",
                marks,
            )
        connection.executemany(
            "INSERT INTO raygrain_event_heads (category, head) VALUES (?, ?)"
            " ON CONFLICT (category) DO UPDATE SET head = excluded.head",
            list(heads.items()),
        )
        connection.execute("COMMIT")
        file.check()
    except BaseException:
        known.forget()
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    # (known.data_version stays what the batch read inside its transaction: this connection's
    # own commit does not change it, and reading it again here could take in another
    # connection's commit made since, which the cached tails know nothing of.)
    known.tails.update(tails)
    known.heads.update(heads)
    return outcomes


def _insert(
    connection: sqlite3.Connection, statement: str, row: str, per_row: int, values: list[Any]
) -> None:
    """``values`` (``per_row`` a row, one row after the other) in multi-row statements of a
    few sizes only (``_shapes``), each of which stays prepared in the connection's cache."""
    start = 0
    for count in _shapes(len(values) // per_row, _rows_per_insert(connection, per_row)):
        end = start + count * per_row
        connection.execute(_statement(statement, row, count), values[start:end])
        start = end


def _shapes(rows: int, most: int) -> list[int]:
    """Row counts adding up to ``rows``: as many ``most`` as fit, then the rest rounded down to
    a multiple of ``_ROWS_STEP``, then what is left in powers of two.

    Preparing a multi-row statement costs SQLite about 1.4 us a row, as much as inserting the
    row: one statement of the batch's own size (a new size nearly every batch under load, more
    sizes than the connection's cache of prepared statements holds) made the writer thread's
    CPU time per append twice the state's write. These sizes are a few dozen statements a
    table, all of them kept prepared, at the cost of a few more statements a batch."""
    counts = [most] * (rows // most)
    rest = rows % most
    if rest >= _ROWS_STEP:
        counts.append(rest - rest % _ROWS_STEP)
        rest %= _ROWS_STEP
    bit = _ROWS_STEP
    while rest:
        bit >>= 1
        if rest & bit:
            counts.append(bit)
            rest -= bit
    return counts


@functools.lru_cache(maxsize=256)
def _statement(statement: str, row: str, count: int) -> str:
    return statement.format(", ".join([row] * count))


def _rows_per_insert(connection: sqlite3.Connection, per_row: int) -> int:
    getlimit = getattr(connection, "getlimit", None)  # (Python 3.11 and later)
    if getlimit is not None:
        limit = int(getlimit(getattr(sqlite3, "SQLITE_LIMIT_VARIABLE_NUMBER")))  # noqa: B009
    else:
        limit = 32_766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
    return max(1, min(_MOST_ROWS_PER_INSERT, limit // per_row))


def _load_tails(connection: sqlite3.Connection, streams: list[str], known: _KnownTails) -> None:
    """Put the head of ``streams`` into ``known`` (("", 0, 0): no events)."""
    for start in range(0, len(streams), 400):
        chunk = streams[start : start + 400]
        found = connection.execute(
            "SELECT stream, category, version, position FROM raygrain_event_streams"
            f" WHERE stream IN ({', '.join('?' * len(chunk))})",
            chunk,
        ).fetchall()
        for stream in chunk:
            known.tails.setdefault(stream, _NO_TAIL)
        for stream, category, version, position in found:
            known.tails[stream] = (category, int(version), int(position))


def _decide(
    connection: sqlite3.Connection,
    batch: list[PendingAppend],
    known: _KnownTails,
    look_up_ids: bool,
) -> tuple[
    list[Appended | Exception],
    list[Any],
    dict[str, int],
    dict[str, _Tail],
    list[tuple[str, int, str, int]],
]:
    """Check each append in queue order against the file and the batch's earlier appends, as if
    they committed one by one, and collect the rows of those that pass: their values, one row
    after the other in ``_INSERT``'s column order; and the streams' new heads and marks.

    (Per event it keeps no object but its values: a tuple or list per row, per event id, alive
    until the batch is inserted, made this thread's allocations set off several garbage
    collections per batch, each traversing every young object of the event loop's calls in
    flight too.)"""
    outcomes: list[Appended | Exception] = []
    values: list[Any] = []
    heads: dict[str, int] = {}
    tails: dict[str, _Tail] = {}  # this batch's, on top of known.tails
    marks: list[tuple[str, int, str, int]] = []
    # The batch's event ids, (stream, id) -> (version, position), made the first time an
    # append needs its ids looked up: in most batches none does.
    batch_ids: dict[tuple[str, str], tuple[int, int]] | None = None
    _load_tails(connection, [a.stream for a in batch if a.stream not in known.tails], known)
    now = time.time()
    for append in batch:
        stream, category = append.stream, append.category
        stored_category, version, last = tails.get(stream) or known.tails[stream]
        # The ids need looking up only when the stream is not where the append expected it
        # (a retry whose first attempt was stored moved it on) or no version was expected.
        if look_up_ids or append.expected_version != version:
            if batch_ids is None:
                batch_ids = _ids_of(values)
            ids = [event_id for _, _, event_id in append.events]
            found = {i: batch_ids[(stream, i)] for i in ids if (stream, i) in batch_ids}
            found.update(
                (event_id, (v, p))
                for event_id, v, p in connection.execute(
                    "SELECT event_id, version, position FROM raygrain_events"
                    f" WHERE stream = ? AND event_id IN ({', '.join('?' * len(ids))})",
                    (stream, *ids),
                )
            )
            try:
                earlier = repeated(stream, ids, found)
            except InvalidEventError as exc:
                outcomes.append(exc)
                continue
            if earlier is not None:
                outcomes.append(earlier)
                continue
        if version and stored_category != category:
            outcomes.append(other_category(stream, category, stored_category))
            continue
        if append.expected_version is not None and append.expected_version != version:
            outcomes.append(wrong_version(stream, append.expected_version, version))
            continue
        if category not in heads:
            if category not in known.heads:
                head = connection.execute(
                    "SELECT head FROM raygrain_event_heads WHERE category = ?", (category,)
                ).fetchone()
                known.heads[category] = 0 if head is None else int(head[0])
            heads[category] = known.heads[category]
        position = heads[category]
        previous = last or None  # (the position of the stream's latest event; None: no event)
        for type_, data, event_id in append.events:
            version += 1
            position += 1
            values += (category, position, stream, version, type_, event_id, now, data, previous)
            previous = position
            if version % MARK_EVERY == 1:
                marks.append((stream, version, category, position))
            if batch_ids is not None:
                batch_ids[(stream, event_id)] = (version, position)
        tails[stream] = (category, version, position)
        heads[category] = position
        outcomes.append(Appended(version, position))
    return outcomes, values, heads, tails, marks


def _ids_of(values: list[Any]) -> dict[tuple[str, str], tuple[int, int]]:
    """(stream, event id) -> (version, position) of the rows in ``values`` (``_decide``'s)."""
    return {
        (values[at + 2], values[at + 5]): (values[at + 3], values[at + 1])
        for at in range(0, len(values), _ROW_VALUES)
    }
