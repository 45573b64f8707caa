"""Storage benchmark: durable writes per second through SqliteStorage's group commit, beside a
naive baseline measured in the same run on the same file system.

Both sides write the same records (one per writer, each writer chaining its ETags) with fsync
durability (WAL, ``synchronous=FULL``) from many concurrent writers. The baseline is the obvious
way to do it on aiosqlite: one ETag-guarded autocommit statement, hence one commit and one fsync,
per write. It is a generous baseline: one thread hop per write, where a group-commit batch costs
four.

    python -m raygrain.benchmarks.storage_bench [--quick] [--dir DIRECTORY]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosqlite

from raygrain.actors import ActorId, InconsistentStateError
from raygrain.benchmarks._measure import Latencies, figure, now
from raygrain.storage import SqliteStorage

__all__ = ["run"]

VALUE_BYTES = 256

WriteFn = Callable[[ActorId, bytes, "str | None"], Awaitable[str]]


async def run(quick: bool, directory: str | None = None) -> dict[str, Any]:
    """Measure both sides and return their figures and the ratio.

    ``quick`` shrinks the run to a smoke test. ``directory`` picks the file system (default: the
    system temporary directory); the figures mean little on tmpfs, where fsync is free.
    """
    writers = 200 if quick else 1000
    rounds = 2 if quick else 5
    value = os.urandom(VALUE_BYTES)
    with tempfile.TemporaryDirectory(prefix="raygrain-bench-", dir=directory) as tmp:
        async with SqliteStorage(Path(tmp) / "group.db", durability="fsync") as storage:
            group = await _measure(storage.write, writers, rounds, value)
            group["transactions"] = storage.commits
        async with _CommitPerWrite(Path(tmp) / "naive.db") as naive:
            baseline = await _measure(naive.write, writers, rounds, value)
            baseline["transactions"] = naive.commits
    speedup = group["writes_per_s"] / baseline["writes_per_s"]
    return {
        "scenario": "storage write, fsync durability",
        "file_system_dir": directory or tempfile.gettempdir(),
        "writers": writers,
        "writes_per_writer": rounds,
        "value_bytes": VALUE_BYTES,
        "group_commit": group,
        "baseline_commit_per_write": baseline,
        "speedup": round(speedup, 1),
        # The suite's common row format (benchmarks._measure.figure), for `raygrain bench`.
        "figures": [
            figure(
                f"SqliteStorage writes/s, {writers} concurrent writers, fsync",
                group["writes_per_s"],
                baseline["writes_per_s"],
                "writes/s",
                baseline_name="aiosqlite, one commit per write",
            )
        ],
    }


async def _measure(write: WriteFn, writers: int, rounds: int, value: bytes) -> dict[str, Any]:
    latencies = Latencies()

    async def writer(index: int) -> None:
        actor = ActorId("BenchAccount", index)
        etag: str | None = None
        for _ in range(rounds):
            started = now()
            etag = await write(actor, value, etag)
            latencies.add(now() - started)

    started = now()
    await asyncio.gather(*(writer(i) for i in range(writers)))
    elapsed = now() - started
    writes = len(latencies.samples)
    return {
        "writes": writes,
        "seconds": round(elapsed, 3),
        "writes_per_s": round(writes / elapsed, 1),
        **{name: round(ms, 2) for name, ms in latencies.percentiles_ms().items()},
    }


class _CommitPerWrite:
    """The baseline: SqliteStorage's table and pragmas, but every write is its own commit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.commits = 0
        self._connection: aiosqlite.Connection | None = None

    async def __aenter__(self) -> _CommitPerWrite:
        self._connection = await aiosqlite.connect(self.path, isolation_level=None)
        await self._connection.execute("PRAGMA journal_mode = WAL")
        await self._connection.execute("PRAGMA synchronous = FULL")
        await self._connection.execute(
            "CREATE TABLE raygrain_state (id BLOB PRIMARY KEY, version INTEGER NOT NULL,"
            " type_name TEXT NOT NULL, actor_key TEXT NOT NULL, data BLOB)"
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def write(self, actor_id: ActorId, data: bytes, expected_etag: str | None) -> str:
        assert self._connection is not None
        key = actor_id.canonical()
        if expected_etag is None:
            cursor = await self._connection.execute(
                "INSERT INTO raygrain_state VALUES (?, 1, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (key, actor_id.type_name, repr(actor_id.key), data),
            )
        else:
            cursor = await self._connection.execute(
                "UPDATE raygrain_state SET data = ?, version = version + 1"
                " WHERE id = ? AND version = ?",
                (data, key, int(expected_etag)),
            )
        if cursor.rowcount != 1:
            raise InconsistentStateError(None, expected_etag, str(actor_id))
        self.commits += 1
        return "1" if expected_etag is None else str(int(expected_etag) + 1)


def _print(result: dict[str, Any]) -> None:
    print(
        f"{result['scenario']}: {result['writers']} concurrent writers x "
        f"{result['writes_per_writer']} writes of {result['value_bytes']} B "
        f"(files in {result['file_system_dir']})"
    )
    for name in ("group_commit", "baseline_commit_per_write"):
        side = result[name]
        print(
            f"  {name:<26} {side['writes_per_s']:>10,.1f} writes/s   p50 {side['p50_ms']:>8.2f} ms"
            f"   p99 {side['p99_ms']:>8.2f} ms   {side['transactions']:>6} transactions"
        )
    print(f"  speedup {result['speedup']}x")
    print(json.dumps(result))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m raygrain.benchmarks.storage_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--dir", default=None, help="directory (file system) for the databases")
    arguments = parser.parse_args()
    _print(asyncio.run(run(arguments.quick, arguments.dir)))
