"""Durable actor writes and transactions on PostgreSQL, each beside its baseline in the same run.

Writes: 1,000 concurrent writers, each calling its own actor in a loop (every call changes the
actor's state, so each acknowledgement stands for a committed write), on a two-silo local
cluster whose store is ``PostgresStorage``: as shipped (group commit: a batch of turns' writes
in one statement), and with ``max_batch=1`` (one statement, one commit, per write). Beside them,
raw asyncpg: 1,000 concurrent writers doing ETag-guarded single-row upserts through a pool of
10 connections, one autocommit statement each (what a provider without batching does). The
sides take turns, several rounds each, one second of writing per round; each side's median
round is reported. The same actors on ``MemoryStorage`` are measured beside them too: the
runtime's own ceiling on this machine at that moment, with no database at all (a gauge of how
busy a shared machine was), and on ``SqliteStorage`` (fsync durability, a file in a temporary
directory), the embedded store's figure in the same run. Each actor side also reports this
process's CPU time per write (all its threads; the PostgreSQL server's own CPU is not in it),
which a busy machine disturbs far less than the rates.

Transactions: transfers between two accounts on different silos (``cluster.transact``), 100 in
flight over many accounts (low contention), beside the same transfers as two independent calls,
and beside the same transactions on SQLite.

The server: ``--dsn`` (or ``RAYGRAIN_BENCH_POSTGRES_DSN``), else a throwaway server started for
the run (``initdb`` + ``pg_ctl`` from ``/usr/lib/postgresql/*/bin``, fsync on, as the tests
do); with neither, the scenario is skipped with a note. Each run works in a schema of its own,
dropped at the end.

    python -m raygrain.benchmarks.postgres_bench [--quick] [--dsn postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg

from raygrain.benchmarks._measure import Measurement, ScenarioSkipped, drive_for, figure, interleave
from raygrain.benchmarks._postgres_server import ThrowawayPostgres, find_postgres_bin
from raygrain.benchmarks.durable_writes_bench import DurableAccount
from raygrain.benchmarks.transactions_bench import Side, TxAccount, _measure, _pairs
from raygrain.runtime import Cluster
from raygrain.storage import MemoryStorage, PostgresStorage, SqliteStorage

__all__ = ["run"]

DSN_VARIABLE = "RAYGRAIN_BENCH_POSTGRES_DSN"
TARGET_RATIO = 10.0
TARGET_WRITES_PER_S = 15_000.0
TARGET_TRANSFERS_PER_S = 2_000.0
ROUNDS = 5
SECONDS = 1.0
RAW_POOL = 10


@contextlib.asynccontextmanager
async def _server(dsn: str | None) -> AsyncIterator[str]:
    dsn = dsn or os.environ.get(DSN_VARIABLE)
    if dsn:
        yield dsn
        return
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        raise ScenarioSkipped(
            "no PostgreSQL server: no server binaries in /usr/lib/postgresql/*/bin or on the "
            f"PATH (install the 'postgresql' package), and no --dsn or {DSN_VARIABLE}"
        )
    server = ThrowawayPostgres(bin_dir)
    try:
        await asyncio.to_thread(server.start)
        yield server.dsn
    finally:
        await asyncio.to_thread(server.remove)


Store = PostgresStorage | SqliteStorage | MemoryStorage


class _ActorSide:
    """Rounds of durable actor writes on one provider."""

    def __init__(self, storage: Store, writers: int, seconds: float) -> None:
        self.storage, self.writers, self.seconds = storage, writers, seconds
        self.commits: list[int] = []
        self.cpu_us_per_write: list[float] = []

    async def measure(self) -> Measurement:
        async with Cluster.local(actors=[DurableAccount], silos=2, storage=self.storage) as c:
            accounts = [c.get(DurableAccount, key) for key in range(self.writers)]
            await asyncio.gather(*(a.balance() for a in accounts))  # activate, untimed
            before, cpu, started = _commits(self.storage), time.process_time(), time.perf_counter()
            measured = await drive_for(
                lambda target, _: accounts[target].deposit(1),
                self.writers,
                self.writers,
                self.seconds,
            )
            writes = measured[0] * (time.perf_counter() - started)
            self.cpu_us_per_write.append((time.process_time() - cpu) / writes * 1e6)
            self.commits.append(_commits(self.storage) - before)
        return measured


def _commits(storage: Store) -> int:
    return storage.writes if isinstance(storage, MemoryStorage) else storage.commits


class _RawSide:
    """Rounds of raw asyncpg single-row upserts, each guarded by the version it read."""

    def __init__(self, pool: asyncpg.Pool, table: str, writers: int, seconds: float) -> None:
        self.pool, self.table, self.writers, self.seconds = pool, table, writers, seconds
        self.versions = [0] * writers
        self.upsert = (
            f"INSERT INTO {table} (id, version, data) VALUES ($1, 1, $3) ON CONFLICT (id) DO "
            f"UPDATE SET version = {table}.version + 1, data = excluded.data "
            f"WHERE {table}.version = $2 RETURNING version"
        )

    async def write(self, target: int, _: int) -> None:
        version = await self.pool.fetchval(
            self.upsert, target.to_bytes(8, "big"), self.versions[target], b"\x81\xa1a\x01"
        )
        assert version is not None, "a raw writer lost its own record's version"
        self.versions[target] = version

    async def measure(self) -> Measurement:
        return await drive_for(self.write, self.writers, self.writers, self.seconds)


async def _writes(
    dsn: str, schema: str, directory: Path, writers: int, seconds: float, rounds: int
) -> list[Any]:
    raw_table = f'"{schema}".raw_upserts'
    async with (
        PostgresStorage(dsn, schema=schema) as group,
        PostgresStorage(dsn, schema=schema, max_batch=1) as naive,
        asyncpg.create_pool(dsn, min_size=RAW_POOL, max_size=RAW_POOL) as pool,
        MemoryStorage() as memory,
        SqliteStorage(directory / "writes.db") as sqlite,
    ):
        await pool.execute(
            f"CREATE TABLE {raw_table} (id bytea PRIMARY KEY, version bigint NOT NULL, data bytea)"
        )
        sides = {
            "group": _ActorSide(group, writers, seconds),
            "naive": _ActorSide(naive, writers, seconds),
            "raw": _RawSide(pool, raw_table, writers, seconds),
            # The runtime's own ceiling on this machine at this moment: no database at all.
            "memory": _ActorSide(memory, writers, seconds),
            "sqlite": _ActorSide(sqlite, writers, seconds),
        }
        measured = await interleave({n: s.measure for n, s in sides.items()}, rounds)
    g, n, r, m = measured["group"], measured["naive"], measured["raw"], measured["memory"]
    q = measured["sqlite"]
    cpu = {
        name: statistics.median(side.cpu_us_per_write)
        for name, side in sides.items()
        if isinstance(side, _ActorSide)
    }
    group_side, naive_side = sides["group"], sides["naive"]
    assert isinstance(group_side, _ActorSide) and isinstance(naive_side, _ActorSide)
    common: dict[str, Any] = {
        "latency": g.median_latencies().percentiles_ms(),
        "rounds": g.rates,
        "statements_per_round": statistics.median(group_side.commits),
        "seconds_per_round": seconds,
        "memory_storage_writes_per_s": m.rate,
        "cpu_us_per_write": cpu["group"],
        "memory_storage_cpu_us_per_write": cpu["memory"],
    }
    meets = g.rate >= TARGET_WRITES_PER_S and g.rate >= TARGET_RATIO * n.rate
    return [
        figure(
            f"durable actor writes/s on PostgreSQL, {writers} writers",
            g.rate,
            n.rate,
            "writes/s",
            baseline_name="same actors, one commit per write (max_batch=1)",
            baseline_latency=n.median_latencies().percentiles_ms(),
            baseline_rounds=n.rates,
            baseline_statements_per_round=statistics.median(naive_side.commits),
            raw_asyncpg_upserts_per_s=r.rate,
            target=f">= {TARGET_RATIO:g}x and >= {TARGET_WRITES_PER_S:,.0f}/s",
            meets_target=meets,
            **common,
        ),
        figure(
            f"durable actor writes/s on PostgreSQL vs raw asyncpg upserts, {writers} writers",
            g.rate,
            r.rate,
            "writes/s",
            baseline_name=f"raw asyncpg single-row upserts, pool of {RAW_POOL}",
            baseline_latency=r.median_latencies().percentiles_ms(),
            baseline_rounds=r.rates,
            **common,
        ),
        figure(
            f"durable actor writes/s on PostgreSQL vs SQLite, {writers} writers",
            g.rate,
            q.rate,
            "writes/s",
            baseline_name="the same actors on SqliteStorage (fsync), group commit",
            baseline_latency=q.median_latencies().percentiles_ms(),
            baseline_rounds=q.rates,
            baseline_cpu_us_per_write=cpu["sqlite"],
            **common,
        ),
    ]


async def _transactions(
    dsn: str, schema: str, directory: Path, accounts: int, transfers: int
) -> list[dict[str, Any]]:
    async with (
        PostgresStorage(dsn, schema=schema) as store,
        Cluster.local(actors=[TxAccount], silos=2, storage=store) as cluster,
    ):
        pairs = _pairs(cluster, accounts, transfers, 1)
        with_tx = await _measure(cluster, pairs, True, 100)
        plain = await _measure(cluster, _pairs(cluster, accounts, transfers, 2), False, 100)
    async with (
        SqliteStorage(directory / "transfers.db") as sqlite,
        Cluster.local(actors=[TxAccount], silos=2, storage=sqlite) as cluster,
    ):
        on_sqlite = await _measure(cluster, _pairs(cluster, accounts, transfers, 1), True, 100)
    low_contention = f"low contention ({accounts:,} accounts, 100 in flight)"
    return [
        _transfers(low_contention, transfers, with_tx, plain),
        figure(
            f"transactional transfers/s on PostgreSQL vs SQLite, {low_contention}",
            with_tx.transfers_per_s,
            on_sqlite.transfers_per_s,
            "transfers/s",
            baseline_name="the same transactions on SqliteStorage (fsync)",
            latency=with_tx.latencies.percentiles_ms(),
            baseline_latency=on_sqlite.latencies.percentiles_ms(),
        ),
    ]


def _transfers(low_contention: str, transfers: int, with_tx: Side, plain: Side) -> dict[str, Any]:
    return figure(
        f"transactional transfers/s on PostgreSQL, {low_contention}",
        with_tx.transfers_per_s,
        plain.transfers_per_s,
        "transfers/s",
        baseline_name="the same transfers as two independent calls (not atomic)",
        latency=with_tx.latencies.percentiles_ms(),
        baseline_latency=plain.latencies.percentiles_ms(),
        transfers=transfers,
        attempts=with_tx.attempts,
        failed_after_retries=with_tx.failed,
        target=f">= {TARGET_TRANSFERS_PER_S:,.0f}/s",
        meets_target=with_tx.transfers_per_s >= TARGET_TRANSFERS_PER_S,
    )


async def run(quick: bool = False, *, smoke: bool = False, dsn: str | None = None) -> list[Any]:
    writers = 100 if smoke else 1000
    seconds = 0.2 if smoke else 0.5 if quick else SECONDS
    rounds = 1 if smoke else 3 if quick else ROUNDS
    transfers = 100 if smoke else 1_000 if quick else 5_000
    async with _server(dsn) as server_dsn:
        schema = f"bench_{uuid.uuid4().hex[:12]}"
        try:
            with tempfile.TemporaryDirectory(prefix="raygrain-pg-bench-") as directory:
                files = Path(directory)
                rows = await _writes(server_dsn, schema, files, writers, seconds, rounds)
                rows += await _transactions(server_dsn, f"{schema}_tx", files, 100_000, transfers)
        finally:
            connection = await asyncpg.connect(server_dsn)
            try:
                for name in (schema, f"{schema}_tx"):
                    await connection.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
            finally:
                await connection.close()
    return rows


def _print(row: dict[str, Any]) -> None:
    latency, base = row["latency"], row["baseline_latency"]
    print(
        f"{row['name']}\n"
        f"  {row['value']:>10,.0f} {row['unit']}  p50 {latency['p50_ms']:.2f} ms  "
        f"p99 {latency['p99_ms']:.2f} ms\n"
        f"  {row['baseline']:>10,.0f} {row['unit']}  p50 {base['p50_ms']:.2f} ms  "
        f"p99 {base['p99_ms']:.2f} ms  ({row['baseline_name']})\n"
        f"  ratio {row['ratio']:.1f}x"
        + (
            f"; target {row['target']}: {'met' if row['meets_target'] else 'NOT met'}"
            if "target" in row
            else ""
        )
        + (
            f"; raw asyncpg upserts {row['raw_asyncpg_upserts_per_s']:,.0f} writes/s"
            if "raw_asyncpg_upserts_per_s" in row
            else ""
        )
        + (
            f"; no database (MemoryStorage) {row['memory_storage_writes_per_s']:,.0f} writes/s"
            if "memory_storage_writes_per_s" in row
            else ""
        )
        + (
            f"\n  CPU of this process per write: {row['cpu_us_per_write']:.0f} us"
            f" (MemoryStorage {row['memory_storage_cpu_us_per_write']:.0f} us"
            + (
                f", SQLite {row['baseline_cpu_us_per_write']:.0f} us"
                if "baseline_cpu_us_per_write" in row
                else ""
            )
            + ")"
            if "cpu_us_per_write" in row
            else ""
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m raygrain.benchmarks.postgres_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--dsn", default=None, help=f"a server to use (default: ${DSN_VARIABLE})")
    arguments = parser.parse_args()
    try:
        for result in asyncio.run(run(arguments.quick, dsn=arguments.dsn)):
            _print(result)
    except ScenarioSkipped as skipped:
        print(f"skipped: {skipped}")
