"""Durable writes through actors: group commit beside one commit per write, in the same run.

1,000 concurrent writers, each calling its own actor in a loop; every call changes the actor's
state, so each acknowledgement stands for a durable write (WAL, ``synchronous=FULL``: fsync on
every commit). Both sides run the same actors on the same local cluster code and the same file
system. The only difference is the provider: ``SqliteStorage`` as shipped, which commits many
turns' writes in one transaction, or with ``max_batch=1``, which takes one write per
transaction and so pays one commit (and one fsync) per acknowledged write. The same load on
``MemoryStorage`` is reported beside them: the runtime's own ceiling, with no disk at all. Then
group commit with metrics on against off, for what recording metrics costs
(``metrics_on_vs_off``, target >= 95%): two clusters on two files, both up, taking short rounds
in pairs, back to back; the median pair's ratio is reported (``benchmarks._measure.paired``).

The sides take turns, five rounds each, and each side's median round is reported. Every round
lasts the same time on every side (one second of writing, then the writes in flight finish):
the group-commit side is CPU-bound and the naive side is fsync-bound, and the speed of a
shared machine's CPU drifts by up to 2x within seconds. A round of a fixed 10,000 writes lasted
a third of a second on the fast side, short enough to sit inside one slow or one fast spell, and
it swung the ratio by 2x from run to run.

    python -m raygrain.benchmarks.durable_writes_bench [--quick] [--dir DIRECTORY]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raygrain.actors import Actor, read_only
from raygrain.benchmarks._measure import Measurement, Paired, drive_for, figure, interleave, paired
from raygrain.runtime import Cluster
from raygrain.storage import MemoryStorage, SqliteStorage, StorageProvider

__all__ = ["run"]

TARGET_RATIO = 10.0
TARGET_WRITES_PER_S = 20_000.0
ROUNDS = 5
SECONDS = 1.0  # of writing per round, on every side
METRICS_TARGET = 0.95  # writes/s with metrics on, over off
METRICS_PAIRS = 40
METRICS_SECONDS = 0.3  # of writing per round of a pair


@dataclass
class Balance:
    amount: int = 0
    deposits: int = 0


class DurableAccount(Actor[Balance], name="bench.DurableAccount"):
    async def deposit(self, amount: int) -> int:
        self.state.amount += amount
        self.state.deposits += 1
        return self.state.deposits

    @read_only
    async def balance(self) -> int:
        return self.state.amount


def _commits(storage: StorageProvider) -> int:
    return int(getattr(storage, "commits", getattr(storage, "writes", 0)))


class _Side:
    """One provider's rounds: each a fresh local cluster on the same storage."""

    def __init__(self, storage: StorageProvider, writers: int, seconds: float) -> None:
        self.storage = storage
        self.writers = writers
        self.seconds = seconds
        self.transactions: list[int] = []  # per round
        self.writes: list[int] = []  # per round

    async def measure(self) -> Measurement:
        storage = self.storage
        async with Cluster.local(actors=[DurableAccount], silos=2, storage=storage) as cluster:
            accounts = [cluster.get(DurableAccount, key) for key in range(self.writers)]
            # Activate (one read each) outside the timing: this measures writes.
            await asyncio.gather(*(account.balance() for account in accounts))
            commits_before = _commits(storage)

            rate, latencies = await drive_for(
                lambda target, _: accounts[target].deposit(1),
                self.writers,
                self.writers,
                self.seconds,
            )
            self.transactions.append(_commits(storage) - commits_before)
            self.writes.append(len(latencies.samples))
        return rate, latencies


async def _metrics_cost(
    directory: Path, writers: int, seconds: float, pairs: int
) -> tuple[Paired, float, float]:
    """Group commit with metrics on against off: writes/s on over off, the median of ``pairs``
    pairs of rounds, and the median writes/s of each side."""
    async with (
        SqliteStorage(directory / "metered.db", durability="fsync") as metered_storage,
        SqliteStorage(directory / "unmetered.db", durability="fsync") as unmetered_storage,
        Cluster.local(
            actors=[DurableAccount], silos=2, storage=metered_storage, metrics=True
        ) as metered,
        Cluster.local(
            actors=[DurableAccount], silos=2, storage=unmetered_storage, metrics=False
        ) as unmetered,
    ):
        rates: dict[bool, list[float]] = {True: [], False: []}

        async def side(cluster: Cluster, metrics: bool) -> Callable[[], Awaitable[float]]:
            accounts = [cluster.get(DurableAccount, key) for key in range(writers)]
            await asyncio.gather(*(account.balance() for account in accounts))

            async def measure() -> float:
                rate, _ = await drive_for(
                    lambda target, _: accounts[target].deposit(1), writers, writers, seconds
                )
                rates[metrics].append(rate)
                return rate

            return measure

        on, off = await side(metered, True), await side(unmetered, False)
        ratio = await paired(on, off, pairs)
        return ratio, statistics.median(rates[True]), statistics.median(rates[False])


async def run(quick: bool = False, directory: str | None = None) -> list[dict[str, Any]]:
    """Group commit, one commit per write, and the no-disk ceiling, in interleaved rounds (the
    median round of each side is reported). ``directory`` picks the file system (default: the
    system temporary directory; on tmpfs fsync is free and the figures mean little)."""
    writers = 200 if quick else 1000
    seconds = 0.2 if quick else SECONDS
    rounds = 1 if quick else ROUNDS
    with tempfile.TemporaryDirectory(prefix="raygrain-bench-", dir=directory) as tmp:
        async with (
            SqliteStorage(Path(tmp) / "group.db", durability="fsync") as group_storage,
            SqliteStorage(Path(tmp) / "naive.db", durability="fsync", max_batch=1) as naive_storage,
            MemoryStorage() as memory_storage,
        ):
            sides = {
                "group": _Side(group_storage, writers, seconds),
                "naive": _Side(naive_storage, writers, seconds),
                "memory": _Side(memory_storage, writers, seconds),
            }
            measured = await interleave(
                {name: side.measure for name, side in sides.items()}, rounds
            )
        metrics, metrics_on_rate, metrics_off_rate = await _metrics_cost(
            Path(tmp), writers, METRICS_SECONDS, 2 if quick else METRICS_PAIRS
        )
    group, naive, memory = measured["group"], measured["naive"], measured["memory"]
    return [
        figure(
            f"durable actor writes/s, {writers} concurrent writers, fsync",
            group.rate,
            naive.rate,
            "writes/s",
            baseline_name="same actors, one commit per write (max_batch=1)",
            latency=group.median_latencies().percentiles_ms(),
            baseline_latency=naive.median_latencies().percentiles_ms(),
            rounds=group.rates,
            baseline_rounds=naive.rates,
            transactions=statistics.median(sides["group"].transactions),
            baseline_transactions=statistics.median(sides["naive"].transactions),
            writes=statistics.median(sides["group"].writes),
            baseline_writes=statistics.median(sides["naive"].writes),
            seconds_per_round=seconds,
            # Group commit with metrics on over off: the median of pairs of rounds.
            metrics_on_vs_off=metrics.ratio,
            metrics_on_vs_off_quartiles=list(metrics.quartiles),
            metrics_pairs=len(metrics.ratios),
            metrics_on_writes_per_s=metrics_on_rate,
            metrics_off_writes_per_s=metrics_off_rate,
            metrics_target=f">= {METRICS_TARGET:.0%} of writes/s with metrics off",
            metrics_meets_target=metrics.ratio >= METRICS_TARGET,
            memory_storage_writes_per_s=memory.rate,
            memory_storage_latency=memory.median_latencies().percentiles_ms(),
            file_system_dir=directory or tempfile.gettempdir(),
            target_ratio=TARGET_RATIO,
            target_writes_per_s=TARGET_WRITES_PER_S,
            target=f">= {TARGET_RATIO:g}x and >= {TARGET_WRITES_PER_S:,.0f}/s",
            meets_target=(
                group.rate >= TARGET_WRITES_PER_S and group.rate >= TARGET_RATIO * naive.rate
            ),
        )
    ]


def _print(row: dict[str, Any]) -> None:
    met = row["ratio"] >= TARGET_RATIO and row["value"] >= TARGET_WRITES_PER_S
    print(
        f"{row['name']} (files in {row['file_system_dir']}, "
        f"{row['seconds_per_round']:g} s of writing per round)\n"
        f"  group commit          {row['value']:>10,.0f} writes/s   "
        f"p50 {row['latency']['p50_ms']:>7.2f} ms   p99 {row['latency']['p99_ms']:>7.2f} ms   "
        f"{row['transactions']:>6} transactions\n"
        f"  one commit per write  {row['baseline']:>10,.0f} writes/s   "
        f"p50 {row['baseline_latency']['p50_ms']:>7.2f} ms   "
        f"p99 {row['baseline_latency']['p99_ms']:>7.2f} ms   "
        f"{row['baseline_transactions']:>6} transactions\n"
        f"  (no disk: MemoryStorage {row['memory_storage_writes_per_s']:>10,.0f} writes/s   "
        f"p50 {row['memory_storage_latency']['p50_ms']:>7.2f} ms)\n"
        f"  group commit, metrics on/off {row['metrics_on_vs_off']:.1%} (quartiles "
        f"{row['metrics_on_vs_off_quartiles'][0]:.1%}-{row['metrics_on_vs_off_quartiles'][1]:.1%}"
        f" of {row['metrics_pairs']} pairs; target {METRICS_TARGET:.0%})\n"
        f"  ratio {row['ratio']:.1f}x; target >= {TARGET_RATIO:g}x and "
        f">= {TARGET_WRITES_PER_S:,.0f} writes/s: {'met' if met else 'NOT met'}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m raygrain.benchmarks.durable_writes_bench",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--dir", default=None, help="directory (file system) for the databases")
    arguments = parser.parse_args()
    for result in asyncio.run(run(arguments.quick, arguments.dir)):
        _print(result)
