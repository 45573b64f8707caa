"""In-process calls: raygrain's local cluster beside a bare asyncio mailbox.

The baseline is the least a turn-based actor needs: one queue and one worker task per object,
a future per call, no runtime. raygrain adds placement, the copy boundary (msgpack both ways),
deadlines and turn scheduling on top, so the ratio says what those cost. The same cluster with
metrics off is measured against it (``metrics_on_vs_off``: what recording metrics costs; target
>= 95%): both clusters stay up and take short rounds in pairs, back to back, and the median
pair's ratio is reported (``benchmarks._measure.paired``), with the CPU time per call of each
(``metrics_cpu_overhead``).

The machine running this is usually shared, so the baseline and raygrain are measured in
interleaved rounds (baseline, raygrain, baseline, raygrain, ...) and each reports its median
round. Every
concurrency level (N callers over N actors, each caller calling its own actor) is a figure; the
suite plots them as throughput against concurrency.

    python -m raygrain.benchmarks.calls_bench [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from raygrain.actors import Actor
from raygrain.benchmarks._measure import Measurement, Paired, drive, figure, interleave, paired
from raygrain.runtime import Cluster

__all__ = ["run"]

BASELINE_NAME = "bare asyncio mailbox"
TARGET_RATIO = 0.6  # with many callers
METRICS_TARGET = 0.95  # calls/s with metrics on, over off


class Ping(Actor[None], name="bench.Ping"):
    async def ping(self, value: int) -> int:
        return value


class _BareObject:
    """The baseline: a per-object queue served by one task, a future per call."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[int, asyncio.Future[int]]] = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        while True:
            value, future = await self.queue.get()
            future.set_result(await self._ping(value))

    async def _ping(self, value: int) -> int:
        return value

    async def ping(self, value: int) -> int:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((value, future))
        return await future


@dataclass(frozen=True)
class _Sizes:
    calls_per_round: int  # spread over the callers of a level
    rounds: int
    metrics_pairs: int  # pairs of rounds of metrics on and off
    calls_per_pair_round: int  # spread over the callers of a level
    levels: tuple[int, ...] = (1, 10, 100, 1000)


def _sizes(quick: bool, smoke: bool) -> _Sizes:
    if smoke:
        return _Sizes(calls_per_round=400, rounds=1, metrics_pairs=2, calls_per_pair_round=200)
    if quick:
        return _Sizes(calls_per_round=3_000, rounds=3, metrics_pairs=20, calls_per_pair_round=2_000)
    return _Sizes(calls_per_round=30_000, rounds=5, metrics_pairs=60, calls_per_pair_round=3_000)


async def _raygrain(callers: int, actors: int, calls: int) -> Measurement:
    async with Cluster.local(actors=[Ping], silos=2) as cluster:
        refs = [cluster.get(Ping, k) for k in range(actors)]
        await asyncio.gather(*(r.ping(0) for r in refs))  # activate outside the timing
        return await drive(lambda t, v: refs[t].ping(v), callers, actors, calls)


async def _metrics_cost(callers: int, calls: int, pairs: int) -> tuple[Paired, float, float]:
    """Metrics on against off: two clusters, up together, taking short rounds in pairs; the
    ratio of calls/s, and the median CPU time per call (us) of each side. The in-process
    cluster runs on this thread, so its CPU time is what a call costs."""
    async with (
        Cluster.local(actors=[Ping], silos=2, metrics=True) as on,
        Cluster.local(actors=[Ping], silos=2, metrics=False) as off,
    ):
        cpu: dict[bool, list[float]] = {True: [], False: []}

        def side(cluster: Cluster, metrics: bool) -> Callable[[], Awaitable[float]]:
            refs = [cluster.get(Ping, k) for k in range(callers)]

            async def measure() -> float:
                started = time.thread_time()
                rate, _ = await drive(lambda t, v: refs[t].ping(v), callers, callers, calls)
                cpu[metrics].append((time.thread_time() - started) / (callers * calls) * 1e6)
                return rate

            return measure

        metered, unmetered = side(on, True), side(off, False)
        await metered()  # activate both sides' actors outside the timing
        await unmetered()
        cpu[True].clear()
        cpu[False].clear()
        ratio = await paired(metered, unmetered, pairs)
        return ratio, statistics.median(cpu[True]), statistics.median(cpu[False])


async def _bare(callers: int, actors: int, calls: int) -> Measurement:
    objects = [_BareObject() for _ in range(actors)]
    try:
        return await drive(lambda t, v: objects[t].ping(v), callers, actors, calls)
    finally:
        for obj in objects:
            obj.task.cancel()
        await asyncio.gather(*(o.task for o in objects), return_exceptions=True)


def _target(callers: int, ratio: float) -> dict[str, Any]:
    if callers < 1000:
        return {}
    return {
        "target": f">= {TARGET_RATIO:.0%} of the baseline",
        "meets_target": ratio >= TARGET_RATIO,
    }


def _label(callers: int) -> str:
    return "one caller" if callers == 1 else f"{callers} callers over {callers} actors"


async def run(quick: bool = False, *, smoke: bool = False) -> list[dict[str, Any]]:
    """One figure per concurrency level; ``smoke`` is a tiny run for the test suite."""
    sizes = _sizes(quick, smoke)
    # Warm both paths (imports, route caches, codec tables) before anything is timed.
    await _bare(10, 10, 10)
    await _raygrain(10, 10, 10)
    results = []
    for callers in sizes.levels:
        calls = max(1, sizes.calls_per_round // callers)
        measured = await interleave(
            {
                "baseline": lambda c=callers, n=calls: _bare(c, c, n),
                "raygrain": lambda c=callers, n=calls: _raygrain(c, c, n),
            },
            sizes.rounds,
        )
        base, ours = measured["baseline"], measured["raygrain"]
        metrics, cpu_on, cpu_off = await _metrics_cost(
            callers, max(1, sizes.calls_per_pair_round // callers), sizes.metrics_pairs
        )
        results.append(
            figure(
                f"in-process calls/s, {_label(callers)}",
                ours.rate,
                base.rate,
                "calls/s",
                baseline_name=BASELINE_NAME,
                series="in-process",
                concurrency=callers,
                calls_per_caller=calls,
                rounds=ours.rates,
                baseline_rounds=base.rates,
                latency=ours.median_latencies().percentiles_ms(),
                baseline_latency=base.median_latencies().percentiles_ms(),
                **_target(callers, ours.rate / base.rate),
                # The same cluster with metrics off: what recording them costs (calls/s on
                # over off, the median of pairs of rounds, and the pairs' quartiles).
                metrics_on_vs_off=metrics.ratio,
                metrics_on_vs_off_quartiles=list(metrics.quartiles),
                metrics_pairs=len(metrics.ratios),
                metrics_target=f">= {METRICS_TARGET:.0%} of calls/s with metrics off",
                metrics_meets_target=metrics.ratio >= METRICS_TARGET,
                # CPU per call (this thread's), on and off (each the median of its rounds).
                cpu_us_per_call=cpu_on,
                metrics_off_cpu_us_per_call=cpu_off,
                metrics_cpu_overhead=cpu_on / cpu_off - 1.0,
            )
        )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m raygrain.benchmarks.calls_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="a short run")
    for row in asyncio.run(run(quick=parser.parse_args().quick)):
        print(
            f"{row['name']}: {row['value']:,.0f} vs {row['baseline']:,.0f} "
            f"({row['ratio']:.0%}); p50 {row['latency']['p50_ms']:.3f} ms, "
            f"p99 {row['latency']['p99_ms']:.3f} ms; metrics on/off {row['metrics_on_vs_off']:.1%} "
            f"(quartiles {row['metrics_on_vs_off_quartiles'][0]:.1%}-"
            f"{row['metrics_on_vs_off_quartiles'][1]:.1%} of {row['metrics_pairs']} pairs; "
            f"target {METRICS_TARGET:.0%}); CPU/call {row['cpu_us_per_call']:.1f} us "
            f"on, {row['metrics_off_cpu_us_per_call']:.1f} us off "
            f"({row['metrics_cpu_overhead']:+.1%})"
        )
