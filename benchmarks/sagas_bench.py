"""Durable sagas: sagas completed per second, beside the same three steps as plain calls.

Each saga has three steps; each step calls a participant actor with the step's idempotency
key (``@idempotent``: the participant records the key with its change). 100 sagas are in
flight at once (100 clients, each starting a saga and waiting for its result, then the next),
on a two-silo local cluster on SQLite (fsync). The baseline runs the same three calls to the
same participants with the same keys, one after the other from the client, with nothing
durable in between: what the saga adds is its progress committed after every step (and at
its start and end), its index, and a turn per step. The sides take turns, a few rounds each;
each side's median round is reported.

    python -m raygrain.benchmarks.sagas_bench [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raygrain.actors import Actor, IdempotencyKeys, idempotent
from raygrain.benchmarks._measure import Latencies, figure, now
from raygrain.runtime import Cluster, Saga, step
from raygrain.storage import SqliteStorage

__all__ = ["run"]

TARGET_SAGAS_PER_S = 500.0
IN_FLIGHT = 100


@dataclass
class Entries:
    total: int = 0
    applied: IdempotencyKeys = field(default_factory=lambda: IdempotencyKeys(keep=100))


class BenchParticipant(Actor[Entries], name="bench.SagaParticipant"):
    @idempotent
    async def apply(self, key: str, amount: int) -> int:
        self.state.total += amount
        return self.state.total


class ThreeSteps(Saga[int], name="bench.ThreeSteps"):
    """Three steps on the client's three participants (input: the client's number)."""

    @step
    async def first(self, client: int) -> int:
        return await _participant(self, client, 0).apply(self.idempotency_key, 1)

    @step
    async def second(self, client: int) -> int:
        return await _participant(self, client, 1).apply(self.idempotency_key, 1)

    @step
    async def third(self, client: int) -> int:
        return await _participant(self, client, 2).apply(self.idempotency_key, 1)


def _participant(saga: ThreeSteps, client: int, index: int) -> BenchParticipant:
    return saga.actors.get(BenchParticipant, f"{client}-{index}")


@dataclass
class Round:
    per_s: float
    latencies: Latencies
    cpu_ms: float = 0.0  # CPU (this process, all threads) per saga or per plain run


async def _sagas(cluster: Cluster, count: int, ids: itertools.count[int]) -> Round:
    latencies = Latencies()
    left = list(range(count))

    async def client(number: int) -> None:
        while left:
            left.pop()
            saga = cluster.get(ThreeSteps, next(ids))
            started = now()
            await saga.start(number)
            await saga.result()
            latencies.add(now() - started)

    started, cpu = now(), time.process_time()
    await asyncio.gather(*(client(n) for n in range(IN_FLIGHT)))
    return Round(count / (now() - started), latencies, (time.process_time() - cpu) / count * 1e3)


async def _plain(cluster: Cluster, count: int, ids: itertools.count[int]) -> Round:
    latencies = Latencies()
    left = list(range(count))

    async def client(number: int) -> None:
        participants = [cluster.get(BenchParticipant, f"{number}-{i}") for i in range(3)]
        while left:
            left.pop()
            run = next(ids)
            started = now()
            for index, participant in enumerate(participants):
                await participant.apply(f"plain/{run}/{index}", 1)
            latencies.add(now() - started)

    started, cpu = now(), time.process_time()
    await asyncio.gather(*(client(n) for n in range(IN_FLIGHT)))
    return Round(count / (now() - started), latencies, (time.process_time() - cpu) / count * 1e3)


def _median(rounds: list[Round]) -> Round:
    return sorted(rounds, key=lambda r: r.per_s)[len(rounds) // 2]


async def run(quick: bool = False, *, smoke: bool = False) -> list[dict[str, Any]]:
    count = 200 if smoke else 1_000 if quick else 3_000
    rounds = 1 if smoke else 3
    with tempfile.TemporaryDirectory(prefix="raygrain-bench-sagas-") as tmp:
        storage = SqliteStorage(Path(tmp) / "sagas.db", durability="fsync")
        async with (
            storage,
            Cluster.local(
                actors=[BenchParticipant, ThreeSteps], silos=2, storage=storage
            ) as cluster,
        ):
            ids = itertools.count()
            # Activate every participant first: this measures sagas, not activations.
            await _plain(cluster, IN_FLIGHT, ids)
            sagas: list[Round] = []
            plain: list[Round] = []
            for _ in range(rounds):
                sagas.append(await _sagas(cluster, count, ids))
                plain.append(await _plain(cluster, count, ids))
    saga, baseline = _median(sagas), _median(plain)
    cpu = statistics.median(r.cpu_ms for r in sagas)
    cpu_baseline = statistics.median(r.cpu_ms for r in plain)
    return [
        figure(
            f"sagas completed/s, 3 steps, {IN_FLIGHT} in flight, 2 silos, SQLite",
            saga.per_s,
            baseline.per_s,
            "sagas/s",
            baseline_name="the same three steps as plain calls from the client",
            latency=saga.latencies.percentiles_ms(),
            baseline_latency=baseline.latencies.percentiles_ms(),
            sagas_per_round=count,
            rounds=rounds,
            rounds_per_s=[round(r.per_s, 1) for r in sagas],
            baseline_rounds_per_s=[round(r.per_s, 1) for r in plain],
            spread=statistics.pstdev(r.per_s for r in sagas) if rounds > 1 else 0.0,
            target=f">= {TARGET_SAGAS_PER_S:,.0f} sagas/s",
            meets_target=saga.per_s >= TARGET_SAGAS_PER_S,
        ),
        figure(
            "CPU per saga, 3 steps (this process, all threads)",
            cpu,
            cpu_baseline,
            "ms",
            baseline_name="the same three steps as plain calls from the client",
            lower_is_better=True,
            sagas_per_core_second=1e3 / cpu if cpu else 0.0,
        ),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m raygrain.benchmarks.sagas_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="a short run")
    args = parser.parse_args()
    first, cpu = asyncio.run(run(args.quick))
    print(
        f"{cpu['name']}: {cpu['value']:.2f} ms vs {cpu['baseline']:.2f} ms "
        f"(about {cpu['sagas_per_core_second']:,.0f} sagas per core-second)"
    )
    for row in [first]:
        print(
            f"{row['name']}\n  {row['value']:,.0f} vs {row['baseline']:,.0f} ({row['ratio']:.2f}x) "
            f"per s; rounds {row['rounds_per_s']} vs {row['baseline_rounds_per_s']}; "
            f"p50 {row['latency']['p50_ms']:.1f} ms, p99 {row['latency']['p99_ms']:.1f} ms "
            f"(plain: p50 {row['baseline_latency']['p50_ms']:.1f} ms); "
            f"target {row['target']}: {'met' if row['meets_target'] else 'MISSED'}"
        )
