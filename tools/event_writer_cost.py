"""The CPU time SQLite's event log spends per append on its writer thread (a profiling harness).

Replays batches as 1,000 writers make them (150-350 appends a batch, one event each, each to a
random stream of 1,000 with the version it expects) straight into ``_apply``, the function the
writer thread runs per batch, on a file with fsync, in this one thread: no event loop, no GIL
contention, so what it prints is SQLite's and the batch's own work. Each statement's share with
``--by-statement``.

    python tools/event_writer_cost.py [--batches 300] [--by-statement]
"""

from __future__ import annotations

import argparse
import collections
import random
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from raygrain.storage import _sqlite_events as events
from raygrain.storage._event_appends import PendingAppend
from raygrain.storage._sqlite_batch import FileIdentity
from raygrain.storage._sqlite_event_schema import CHAIN, EVENT_SCHEMA

STREAMS = 1_000
CATEGORY = "bench.EventAccount"
DATA = b"\x81\xa6amount\x01"  # msgpack {"amount": 1}


def _ignored(outcome: object) -> None:
    """(Each append's callback: the replay reads no outcome.)"""


class _Timed:
    """A connection that adds each statement's CPU time to ``spent`` (by its first words)."""

    def __init__(self, connection: sqlite3.Connection, spent: dict[str, float]) -> None:
        self._connection = connection
        self._spent = spent

    def execute(self, sql: str, *args: Any) -> Any:
        return self._timed(self._connection.execute, sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        return self._timed(self._connection.executemany, sql, *args)

    def _timed(self, run: Any, sql: str, *args: Any) -> Any:
        started = time.thread_time()
        try:
            return run(sql, *args)
        finally:
            self._spent[" ".join(sql.split()[:3])] += time.thread_time() - started

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--by-statement", action="store_true")
    args = parser.parse_args()
    rng = random.Random(1)
    versions = [0] * STREAMS
    ids = iter(range(10**12))

    def batch() -> list[PendingAppend]:
        keys = list(dict.fromkeys(rng.randrange(STREAMS) for _ in range(rng.randint(150, 350))))
        appends = []
        for key in keys:
            event = [("Added", DATA, f"0123456789abcdef0123{next(ids):x}")]
            appends.append(
                PendingAppend(f"{CATEGORY}/{key}", CATEGORY, versions[key], event, _ignored, 9)
            )
            versions[key] += 1
        return appends

    with tempfile.TemporaryDirectory(prefix="raygrain-writer-") as tmp:
        path = str(Path(tmp) / "events.db")
        connection = sqlite3.connect(path, isolation_level=None)
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = FULL")
        connection.executescript(EVENT_SCHEMA)
        for statement in CHAIN:
            connection.execute(statement)
        file, known = FileIdentity(path), events._KnownTails()
        spent: dict[str, float] = collections.defaultdict(float)
        # (Warmed through the same object: the known heads are kept per connection object.)
        timed: Any = _Timed(connection, spent) if args.by_statement else connection
        for _ in range(30):  # warm: the streams have events, the statements are prepared
            events._apply(timed, batch(), file, known)
        spent.clear()
        appends, cpu = 0, 0.0
        for _ in range(args.batches):
            appends_of = batch()
            started = time.thread_time()
            events._apply(timed, appends_of, file, known)
            cpu += time.thread_time() - started
            appends += len(appends_of)
        connection.close()
    print(f"{appends:,} appends in {args.batches} batches: {cpu / appends * 1e6:.2f} us CPU/append")
    for statement, seconds in sorted(spent.items(), key=lambda item: -item[1]):
        print(f"  {seconds / appends * 1e6:6.2f} us  {statement}")


if __name__ == "__main__":
    main()
