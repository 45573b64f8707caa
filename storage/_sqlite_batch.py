"""The group commit of ``SqliteStorage``: one batch of queued writes applied in one
transaction on the writer connection's thread (read the stored versions, check each caller's
ETags, multi-row upserts, commit), and the checks around it.

Kept apart from the provider (storage/_sqlite.py), which owns the connections, the queue and
the errors; everything here runs on the writer's thread.
"""

from __future__ import annotations

import inspect
import os
import sqlite3
from collections.abc import Iterable, Sequence

from raygrain.actors import ConfigurationError, InconsistentStateError, StorageError
from raygrain.storage._pending import Pending
from raygrain.storage._provider import SqlStep

__all__ = [
    "MAX_PARAMS",
    "FileIdentity",
    "KnownVersions",
    "Outcome",
    "commit",
    "commit_with_statements",
]

# SQLite's default limit on host parameters is 999 on old builds; stay well under it.
MAX_PARAMS = 500

_SELECT_VERSIONS = "SELECT id, version FROM raygrain_state WHERE id IN ({})"
# Many rows per statement: each statement is one trip into SQLite, and the writer thread lets go
# of the GIL on every trip (executemany makes one per row), which under load costs the event loop
# a thread switch each time.
_UPSERT = (
    "INSERT INTO raygrain_state (id, version, type_name, actor_key, data) VALUES {}"
    " ON CONFLICT (id) DO UPDATE SET version = excluded.version, data = excluded.data"
)
_ROW_PARAMS = "(?, ?, ?, ?, ?)"
_ROWS_PER_UPSERT = MAX_PARAMS // 5

_MAX_KNOWN_VERSIONS = 200_000
_Row = tuple[bytes, int, str, str, bytes | None]
Outcome = list[str] | InconsistentStateError


class KnownVersions:
    """The stored version of each key, as the writer connection left them: valid while no other
    connection (another process, another ``SqliteStorage`` on the file) has committed since,
    which ``PRAGMA data_version`` tells inside the batch's write transaction. Spares the
    per-batch ``SELECT`` of versions, whose every row is a trip into SQLite on which the writer
    thread lets go of the GIL, and has to wait for the busy event loop to get it back."""

    __slots__ = ("connection", "data_version", "versions")

    def __init__(self) -> None:
        self.connection: sqlite3.Connection | None = None
        self.data_version = -1
        self.versions: dict[bytes, int] = {}  # 0: known to be absent

    def check(self, connection: sqlite3.Connection) -> None:
        """Forget everything unless only ``connection`` has written since the last batch."""
        (data_version,) = connection.execute("PRAGMA data_version").fetchone()
        if connection is not self.connection or data_version != self.data_version:
            self.versions.clear()
            self.connection, self.data_version = connection, data_version
        elif len(self.versions) > _MAX_KNOWN_VERSIONS:
            self.versions.clear()

    def forget(self) -> None:
        self.connection = None
        self.versions.clear()


def commit(
    connection: sqlite3.Connection,
    batch: list[Pending],
    known: KnownVersions,
    file: FileIdentity,
) -> list[Outcome]:
    """On the writer's thread: BEGIN, read the stored versions, decide, write, COMMIT, and
    check that the commit went to the file at our path before anyone is told."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        versions = _versions(connection, batch, known)
        outcomes, to_write, accepted = _decide(batch, versions)
        _upsert(connection, to_write)
        connection.execute("COMMIT")
        file.check()
    except BaseException:
        known.forget()  # the transaction is rolled back by the caller: nothing here holds
        raise
    versions.update(accepted)
    return outcomes


def commit_with_statements(
    connection: sqlite3.Connection,
    statements: Sequence[SqlStep],
    group: Pending,
    known: KnownVersions,
    file: FileIdentity,
) -> list[str]:
    """On the writer's thread: one transaction holding ``statements`` (a caller's own SQL, on
    its own tables, or functions given ``connection``) and ``group``'s writes, all or
    nothing: a stale ETag raises ``InconsistentStateError``, a failing statement its
    ``sqlite3.Error`` and a function what it raised, and each rolls everything back here, on
    the thread, before another job can use the connection."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        versions = _versions(connection, (group,), known)
        outcomes, to_write, accepted = _decide((group,), versions)
        if isinstance(outcomes[0], InconsistentStateError):
            raise outcomes[0]
        for step in statements:
            if callable(step):
                done = step(connection)
                if inspect.isawaitable(done):
                    if inspect.iscoroutine(done):
                        done.close()
                    raise ConfigurationError(
                        f"{step!r} returned an awaitable: on SQLite a function given the "
                        "connection is a plain function, called on the writer's thread"
                    )
            else:
                connection.execute(*step)
        _upsert(connection, to_write)
        connection.execute("COMMIT")
        file.check()
    except BaseException:
        known.forget()
        if connection.in_transaction:
            connection.rollback()
        raise
    versions.update(accepted)
    return outcomes[0]


def _versions(
    connection: sqlite3.Connection, batch: Iterable[Pending], known: KnownVersions
) -> dict[bytes, int]:
    """The stored version of every key ``batch`` writes (0: none), inside the transaction."""
    known.check(connection)
    versions = known.versions
    keys = [write.actor_id.canonical() for pending in batch for write in pending.writes]
    unknown = [key for key in dict.fromkeys(keys) if key not in versions]
    for start in range(0, len(unknown), MAX_PARAMS):
        chunk = unknown[start : start + MAX_PARAMS]
        versions.update(dict.fromkeys(chunk, 0))
        query = _SELECT_VERSIONS.format(", ".join("?" * len(chunk)))
        found = connection.execute(query, chunk)
        versions.update((bytes(key), int(version)) for key, version in found)
    return versions


def _upsert(connection: sqlite3.Connection, to_write: list[_Row]) -> None:
    for start in range(0, len(to_write), _ROWS_PER_UPSERT):
        rows = to_write[start : start + _ROWS_PER_UPSERT]
        statement = _UPSERT.format(", ".join([_ROW_PARAMS] * len(rows)))
        connection.execute(statement, [value for row in rows for value in row])


class FileIdentity:
    """Which file (device and inode) the store and its write-ahead log are, as first seen.

    SQLite keeps writing through its open descriptors after the database file (or its -wal) is
    deleted, or after another file is renamed over it: every such commit would be acknowledged
    and then be gone on reopen. So after each commit, before any writer is told, the path must
    still name the same files (two stat calls per batch, not per write)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._seen: dict[str, tuple[int, int]] = {}

    def check(self) -> None:
        for name in (self.path, self.path + "-wal"):
            try:
                stat = os.stat(name)
            except FileNotFoundError:
                raise StorageError(
                    f"SQLite state store {name!r} was deleted while open: the last commit "
                    "went to a file that is no longer there, so it is not acknowledged; "
                    "restore the file or restart on a new store"
                ) from None
            identity = (stat.st_dev, stat.st_ino)
            if self._seen.setdefault(name, identity) != identity:
                raise StorageError(
                    f"SQLite state store {name!r} was replaced by another file while open: "
                    "the last commit went to the old file, so it is not acknowledged"
                )


def _decide(
    batch: Iterable[Pending], versions: dict[bytes, int]
) -> tuple[list[Outcome], list[_Row], dict[bytes, int]]:
    """Check each caller's ETags in queue order and collect the rows of those that pass, and the
    versions they leave (``versions``: every key's stored version, 0 for none).

    A caller is checked against what the earlier writes of the same batch left, exactly as if
    they had committed one by one; a group is all or nothing.
    """
    outcomes: list[Outcome] = []
    rows: list[_Row] = []
    accepted: dict[bytes, int] = {}  # on top of versions (every value >= 1)
    for pending in batch:
        stale = None
        for write in pending.writes:
            version = accepted.get(key := write.actor_id.canonical()) or versions[key]
            stored_etag = str(version) if version else None
            if stored_etag != write.expected_etag:
                stale = InconsistentStateError(
                    stored_etag, write.expected_etag, str(write.actor_id)
                )
                break
        if stale is not None:
            outcomes.append(stale)
            continue
        etags = []
        for write in pending.writes:
            old = accepted.get(key := write.actor_id.canonical()) or versions[key]
            accepted[key] = old + 1
            # The names are written with a new row only: an update keeps the row's own.
            type_name = "" if old else _printable(write.actor_id.type_name)
            rows.append(
                (key, old + 1, type_name, "" if old else repr(write.actor_id.key), write.data)
            )
            etags.append(str(old + 1))
        outcomes.append(etags)
    return outcomes, rows, accepted


def _printable(text: str) -> str:
    # Lone surrogates are valid in an ActorId (its canonical form keeps them) but not in TEXT.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
