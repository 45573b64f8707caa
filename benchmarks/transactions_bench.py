"""Transfers with multi-actor transactions, beside the same transfers without, in the same run.

Each transfer debits one account and credits another on a different silo of a two-silo local
cluster on SQLite (fsync). With transactions, both changes commit in one transaction through the
retry helper (``cluster.transact(..., retries=10)``); without, they are two independent calls
(each committing on its own: fast, and not atomic). Two loads: low contention (transfers spread
over many accounts, 100 transfers in flight) and high contention (10 accounts, 10 transfers in
flight: at most 5 can hold their two accounts at once, so half of them always wait, and
collisions abort attempts; the full run also sweeps 5 to 50 transfers in flight).

    python -m raygrain.benchmarks.transactions_bench [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raygrain.actors import Actor, TransactionAbortedError, read_only, transactional
from raygrain.benchmarks._measure import Latencies, figure, now
from raygrain.runtime import Cluster
from raygrain.storage import SqliteStorage

__all__ = ["run"]

TARGET_TRANSFERS_PER_S = 2_000.0
TARGET_ABORT_RATE = 0.20
LOW_CONTENTION_WORKERS = 100
HIGH_CONTENTION_WORKERS = 10


@dataclass
class Funds:
    balance: int = 0


class TxAccount(Actor[Funds], name="bench.TxAccount"):
    @transactional
    async def add(self, amount: int) -> None:
        self.state.balance += amount

    async def add_plain(self, amount: int) -> None:
        self.state.balance += amount

    @read_only
    async def balance(self) -> int:
        return self.state.balance


@dataclass
class Side:
    transfers_per_s: float
    latencies: Latencies
    attempts: int = 0
    failed: int = 0  # transfers that still aborted after every retry


def _pairs(cluster: Cluster, accounts: int, count: int, seed: int) -> list[tuple[int, int]]:
    """``count`` (from, to) pairs whose two accounts live on different silos."""
    ring = cluster._caller._membership.ring
    owner = {i: ring.owner(cluster.get(TxAccount, i).actor_id) for i in range(min(accounts, 4096))}
    rng = random.Random(seed)
    pairs: list[tuple[int, int]] = []
    while len(pairs) < count:
        src, dst = rng.randrange(accounts), rng.randrange(accounts)
        if src == dst:
            continue
        if src in owner and dst in owner and owner[src] == owner[dst]:
            continue
        pairs.append((src, dst))
    return pairs


async def _measure(
    cluster: Cluster, pairs: list[tuple[int, int]], transactional_: bool, workers: int
) -> Side:
    refs: dict[int, TxAccount] = {}

    def ref(i: int) -> TxAccount:
        found = refs.get(i)
        if found is None:
            found = refs[i] = cluster.get(TxAccount, i)
        return found

    # Activate every account first (one read each): this measures transfers, not activations.
    await asyncio.gather(*(ref(i).balance() for i in {i for pair in pairs for i in pair}))
    side = Side(0.0, Latencies())
    queue = list(reversed(pairs))

    async def worker() -> None:
        while queue:
            src, dst = queue.pop()
            started = now()
            if transactional_:

                async def transfer() -> None:
                    side.attempts += 1
                    await ref(src).add(-1)  # noqa: B023  # awaited within the iteration
                    await ref(dst).add(1)  # noqa: B023

                try:
                    await cluster.transact(transfer, retries=10)
                except TransactionAbortedError:
                    side.failed += 1
                    continue
            else:
                side.attempts += 1
                await ref(src).add_plain(-1)
                await ref(dst).add_plain(1)
            side.latencies.add(now() - started)

    started = now()
    await asyncio.gather(*(worker() for _ in range(workers)))
    side.transfers_per_s = (len(pairs) - side.failed) / (now() - started)
    return side


async def _compare(
    accounts: int, transfers: int, workers: int, directory: str, baseline: bool = True
) -> tuple[Side, Side | None]:
    db = SqliteStorage(Path(directory) / f"tx-{accounts}-{workers}.db", durability="fsync")
    async with db, Cluster.local(actors=[TxAccount], silos=2, storage=db) as cluster:
        pairs = _pairs(cluster, accounts, transfers, 1)
        with_tx = await _measure(cluster, pairs, True, workers)
        without = None
        if baseline:
            pairs = _pairs(cluster, accounts, transfers, 2)
            without = await _measure(cluster, pairs, False, workers)
    return with_tx, without


def _abort_rate(side: Side, transfers: int) -> float:
    return (side.attempts - (transfers - side.failed)) / side.attempts


async def run(quick: bool = False, *, smoke: bool = False) -> list[dict[str, Any]]:
    many = 1_000 if smoke else 10_000 if quick else 100_000
    transfers = 100 if smoke else 1_000 if quick else 5_000
    rows = []
    loads = (
        (many, LOW_CONTENTION_WORKERS, "low"),
        (10, HIGH_CONTENTION_WORKERS, "high"),
    )
    with tempfile.TemporaryDirectory(prefix="raygrain-bench-tx-") as tmp:
        for accounts, workers, label in loads:
            tx, plain = await _compare(accounts, transfers, workers, tmp)
            assert plain is not None
            abort_rate = _abort_rate(tx, transfers)
            extra: dict[str, Any] = (
                {
                    "target": f">= {TARGET_TRANSFERS_PER_S:,.0f}/s",
                    "meets_target": tx.transfers_per_s >= TARGET_TRANSFERS_PER_S,
                }
                if label == "low"
                else {
                    "target": f"abort rate < {TARGET_ABORT_RATE:.0%} with retries",
                    "meets_target": abort_rate < TARGET_ABORT_RATE,
                }
            )
            if label == "high" and not (quick or smoke):
                sweep = {}
                for in_flight in (5, 20, 50):
                    side, _ = await _compare(10, transfers, in_flight, tmp, baseline=False)
                    sweep[str(in_flight)] = _abort_rate(side, transfers)
                extra["abort_rate_by_transfers_in_flight"] = {
                    **sweep,
                    str(workers): abort_rate,
                }
            rows.append(
                figure(
                    f"transactional transfers/s, 2 silos, SQLite, {label} contention "
                    f"({accounts:,} accounts, {workers} in flight)",
                    tx.transfers_per_s,
                    plain.transfers_per_s,
                    "transfers/s",
                    baseline_name="the same transfers as two independent calls (not atomic)",
                    latency=tx.latencies.percentiles_ms(),
                    baseline_latency=plain.latencies.percentiles_ms(),
                    transfers=transfers,
                    transfers_in_flight=workers,
                    attempts=tx.attempts,
                    abort_rate=abort_rate,
                    failed_after_retries=tx.failed,
                    **extra,
                )
            )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m raygrain.benchmarks.transactions_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="a short run")
    args = parser.parse_args()
    for row in asyncio.run(run(args.quick)):
        print(
            f"{row['name']}\n  {row['value']:,.0f} vs {row['baseline']:,.0f} transfers/s "
            f"({row['ratio']:.2f}x); p50 {row['latency']['p50_ms']:.2f} ms, "
            f"p99 {row['latency']['p99_ms']:.2f} ms; abort rate {row['abort_rate']:.1%} "
            f"of {row['attempts']:,} attempts; {row['failed_after_retries']} failed after "
            f"retries; target {row['target']}: {'met' if row['meets_target'] else 'MISSED'}"
        )
