"""In-process calls: raygrain's local cluster beside a bare asyncio mailbox.

The baseline is the least a turn-based actor needs: one queue and one worker task per object,
a future per call, no runtime. raygrain adds placement, the copy boundary (msgpack both ways),
deadlines and turn scheduling on top, so the ratio says what those cost.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from actors import Actor
from benchmarks._measure import Latencies, figure, now
from runtime import Cluster


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


async def _drive(
    call: Any, callers: int, actors: int, calls_per_caller: int
) -> tuple[float, Latencies]:
    latencies = Latencies()

    async def caller(index: int) -> None:
        target = index % actors
        for i in range(calls_per_caller):
            started = now()
            await call(target, i)
            latencies.add(now() - started)

    started = now()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    elapsed = now() - started
    return callers * calls_per_caller / elapsed, latencies


async def _raygrain(callers: int, actors: int, calls: int) -> tuple[float, Latencies]:
    async with Cluster.local(actors=[Ping], silos=2) as cluster:
        refs = [cluster.get(Ping, k) for k in range(actors)]
        await asyncio.gather(*(r.ping(0) for r in refs))  # activate outside the timing
        return await _drive(lambda t, v: refs[t].ping(v), callers, actors, calls)


async def _bare(callers: int, actors: int, calls: int) -> tuple[float, Latencies]:
    objects = [_BareObject() for _ in range(actors)]
    try:
        return await _drive(lambda t, v: objects[t].ping(v), callers, actors, calls)
    finally:
        for obj in objects:
            obj.task.cancel()
        await asyncio.gather(*(o.task for o in objects), return_exceptions=True)


async def run(quick: bool = False) -> list[dict[str, Any]]:
    single_calls = 2_000 if quick else 20_000
    many_calls = 5 if quick else 40
    results = []
    for label, callers, actors, calls in (
        ("one caller", 1, 1, single_calls),
        ("1000 callers over 1000 actors", 1000, 1000, many_calls),
    ):
        base_rate, base_lat = await _bare(callers, actors, calls)
        rate, lat = await _raygrain(callers, actors, calls)
        results.append(
            figure(
                f"in-process calls/s, {label}",
                rate,
                base_rate,
                "calls/s",
                baseline_name="bare asyncio mailbox",
                latency=lat.percentiles_ms(),
                baseline_latency=base_lat.percentiles_ms(),
            )
        )
    return results


if __name__ == "__main__":
    for row in asyncio.run(run(quick="--quick" in sys.argv)):
        print(
            f"{row['name']}: {row['value']:,.0f} vs {row['baseline']:,.0f} "
            f"({row['ratio']:.0%}); p50 {row['latency']['p50_ms']:.3f} ms, "
            f"p99 {row['latency']['p99_ms']:.3f} ms"
        )
