"""Calls and activations through Ray-hosted silos, beside plain Ray actors in the same session.

raygrain on Ray hosts many activations in one silo process and batches every message for one
silo that an event-loop iteration produces. The same silos are called by two clients in the
same run: one on the direct plane (the default: the silos' own authenticated connections) and
one with ``transport="ray"`` (each batch a Ray actor call). The baselines are what a Ray user
writes without raygrain: one Ray actor per entity, called directly, and named actors created on
first use with ``get_if_exists=True`` as "naive virtual actors".

- calls/s with N concurrent callers (N = 1, 10, 100, 1000) over N grains, beside the same
  callers spread over a pool of raw Ray actors. A Ray actor is a process here (about 1.3 s each
  to start on a 2-core machine), so the pool cannot be one actor per entity. It has 16 actors:
  the baseline's calls/s are the same with 8, 16 or 32 (the driver's submissions are the
  limit), and each idle actor process costs the machine CPU that the other side's rounds
  then lack (32 idle ones cost a raygrain round about 15-20% of its calls/s on 2 cores).
  Each round lasts the same time on both sides (``round_seconds``), not the same number of
  calls: 10 calls per caller made a raygrain round of 0.2 s, in which starting 1,000 callers
  and waiting for the last ones weighed about 15% (a raw round of the same calls took 4 s).
- every round starts after a pause (``SETTLE_SECONDS``), so that neither side is measured
  while the other's leftovers run: after thousands of raw Ray calls, Ray's task-event reports
  keep the GCS busy for about a second.
- single-call latency (p50, one caller, sequential calls): grain beside raw Ray actor.
- activations/s: first calls to new keys (1,000 concurrent callers) beside named-actor creation.

Storage is ``memory://`` in each silo: the grains are ``Actor[None]``, so calls and activations
touch no storage at all, and the session needs no storage-server actor.

    python -m raygrain.benchmarks.ray_bench [--quick] [--address ADDRESS]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import ray

from raygrain.actors import Actor
from raygrain.benchmarks._measure import (
    Measurement,
    Rounds,
    drive,
    drive_for,
    figure,
    interleave,
    now,
)
from raygrain.benchmarks._ray import ensure_ray, shutdown_ray
from raygrain.runtime import Cluster

__all__ = ["NEEDS_RAY", "run"]

NEEDS_RAY = True
CALLERS = 1000
SETTLE_SECONDS = 1.0  # between rounds (see the module's docstring)


class RayPing(Actor[None], name="bench.RayPing"):
    async def ping(self, value: int) -> int:
        return value


@ray.remote(num_cpus=0)
class RawPing:
    """The baseline entity: a plain (one call at a time) Ray actor."""

    def ping(self, value: int) -> int:
        return value


@ray.remote(num_cpus=0)
class AsyncRawPing:
    """A reference, not a baseline: the same entity as an async Ray actor, which is what a
    silo is. Its single-call latency is the floor for any call through an async Ray actor."""

    async def ping(self, value: int) -> int:
        return value


@dataclass(frozen=True)
class _Sizes:
    raw_actors: int  # named Ray actors: the activation baseline, then the raw call pool
    activations: int  # new grain keys per activation round
    round_seconds: float  # each round of a concurrency level, on each side
    single_calls: int  # sequential calls of the one-caller level
    rounds: int
    levels: tuple[int, ...] = (1, 10, 100, CALLERS)
    settle: float = SETTLE_SECONDS


def _sizes(quick: bool, smoke: bool) -> _Sizes:
    if smoke:
        return _Sizes(
            raw_actors=2,
            activations=500,
            round_seconds=0.1,
            single_calls=30,
            rounds=1,
            levels=(1, CALLERS),
            settle=0.0,
        )
    if quick:
        return _Sizes(
            raw_actors=4,
            activations=2_000,
            round_seconds=0.3,
            single_calls=150,
            rounds=3,
        )
    return _Sizes(
        raw_actors=16,
        activations=20_000,
        round_seconds=1.0,
        single_calls=2_000,
        rounds=5,
    )


async def _activate(cluster: Cluster, keys: range) -> float:
    """First calls to ``keys`` (new ones), from CALLERS concurrent callers; activations/s."""
    pending = iter(keys)

    async def caller() -> None:
        for key in pending:
            await cluster.get(RayPing, key).ping(0)

    started = now()
    await asyncio.gather(*(caller() for _ in range(min(CALLERS, len(keys)))))
    return len(keys) / (now() - started)


async def _create_named(count: int) -> tuple[float, list[Any]]:
    """Named actors created on first use, all at once; creations/s and their handles."""
    prefix = f"bench-raw-{uuid.uuid4().hex[:8]}"
    started = now()
    handles = [
        RawPing.options(  # type: ignore[attr-defined]
            name=f"{prefix}-{i}", get_if_exists=True
        ).remote()
        for i in range(count)
    ]
    await asyncio.gather(*(h.ping.remote(0) for h in handles))
    return count / (now() - started), handles


async def _async_actor_p50(calls: int) -> float:
    """p50 (ms) of sequential calls to a fresh async Ray actor (see AsyncRawPing)."""
    handle = AsyncRawPing.remote()  # type: ignore[attr-defined]
    try:
        await handle.ping.remote(0)
        _, latencies = await drive(lambda t, v: handle.ping.remote(v), 1, 1, calls)
        return float(latencies.percentiles_ms()["p50_ms"])
    finally:
        ray.kill(handle)


async def run(
    quick: bool = False, *, smoke: bool = False, address: str | None = None
) -> list[dict[str, Any]]:
    """Start (or join, with ``address``) Ray unless a session is already up, then measure."""
    sizes = _sizes(quick, smoke)
    started_ray = ensure_ray(address)
    try:
        return await _measure(sizes, address)
    finally:
        if started_ray:
            shutdown_ray()


async def _measure(sizes: _Sizes, address: str | None) -> list[dict[str, Any]]:
    # A deployment of its own (Cluster.ray names it uniquely): it cannot touch another one.
    setup_started = now()
    async with Cluster.ray(actors=[RayPing], address=address, storage="memory://") as cluster:
        setup_seconds = now() - setup_started
        # Warm the client's route to the silo before anything is timed.
        await cluster.get(RayPing, -1).ping(0)
        async with Cluster.connect(
            address or "auto", [RayPing], name=cluster.name or "", transport="ray"
        ) as over_ray:
            await over_ray.get(RayPing, -1).ping(0)
            return await _measure_with(cluster, over_ray, sizes, setup_seconds)


async def _measure_with(
    cluster: Cluster, over_ray: Cluster, sizes: _Sizes, setup_seconds: float
) -> list[dict[str, Any]]:
    per_round = sizes.activations
    activation_rates = [
        await _activate(cluster, range(1 + r * per_round, 1 + (r + 1) * per_round))
        for r in range(sizes.rounds)
    ]
    named_rate, raw = await _create_named(sizes.raw_actors)
    try:
        rows = [_activation_row(activation_rates, named_rate, sizes, setup_seconds)]
        rows += await _calls(cluster, over_ray, raw, sizes)
    finally:
        for handle in raw:
            ray.kill(handle)
    return rows


def _activation_row(
    rates: list[float], named_rate: float, sizes: _Sizes, setup_seconds: float
) -> dict[str, Any]:
    row = figure(
        "Ray activations/s, first calls to new keys",
        statistics.median(rates),
        named_rate,
        "activations/s",
        baseline_name="Ray named actors, get_if_exists=True",
        rounds=rates,
        note=(
            f"{sizes.activations} new keys per round from {CALLERS} callers; baseline: "
            f"{sizes.raw_actors} named actors created at once (one process each); "
            f"silo startup {setup_seconds:.1f} s, not counted"
        ),
        target=">= 1000x",
    )
    row["meets_target"] = row["ratio"] >= 1000
    return row


# The targets of the direct plane against raw Ray actor calls (issue: a direct data plane).
TARGETS = {1: 3.0, CALLERS: 40.0}
P50_TARGET = 0.3


async def _calls(
    cluster: Cluster, over_ray: Cluster, raw: list[Any], sizes: _Sizes
) -> list[dict[str, Any]]:
    """Each concurrency level: raw Ray actor calls, raygrain direct and raygrain over Ray
    calls, interleaved round by round."""
    direct = [cluster.get(RayPing, k) for k in range(1, CALLERS + 1)]
    by_ray = [over_ray.get(RayPing, k) for k in range(1, CALLERS + 1)]
    await asyncio.gather(*(g.ping(0) for g in direct))  # all active before anything is timed
    await asyncio.gather(*(g.ping(0) for g in by_ray))
    rows = []
    for callers in sizes.levels:
        single = callers == 1
        result = await interleave(
            _sides(callers, raw, direct, by_ray, sizes), sizes.rounds, settle=sizes.settle
        )
        base = result["baseline"]
        base_latency = base.median_latencies().percentiles_ms()
        label = "one caller" if single else f"{callers} callers over {callers} actors"
        for side, suffix in (("direct", ""), ("ray", ", Ray transport")):
            ours = result[side]
            latency = ours.median_latencies().percentiles_ms()
            row = figure(
                f"Ray calls/s, {label}{suffix}",
                ours.rate,
                base.rate,
                "calls/s",
                baseline_name="raw Ray actor calls",
                series=f"Ray, {side} transport",
                transport=side,
                concurrency=callers,
                round_seconds=None if single else sizes.round_seconds,
                rounds=ours.rates,
                baseline_rounds=base.rates,
                latency=latency,
                baseline_latency=base_latency,
                note=f"baseline spreads the callers over {min(callers, len(raw))} raw Ray actors",
            )
            if side == "direct" and callers in TARGETS:
                row["target"] = f">= {TARGETS[callers]:g}x"
                row["meets_target"] = row["ratio"] >= TARGETS[callers]
            rows.append(row)
        if single:
            rows += await _latency_rows(result, sizes)
    return rows


def _sides(
    callers: int, raw: list[Any], direct: list[Any], by_ray: list[Any], sizes: _Sizes
) -> dict[str, Callable[[], Awaitable[Measurement]]]:
    def raw_call(t: int, v: int) -> Any:
        return raw[t].ping.remote(v)

    def direct_call(t: int, v: int) -> Any:
        return direct[t].ping(v)

    def ray_call(t: int, v: int) -> Any:
        return by_ray[t].ping(v)

    if callers == 1:  # a latency figure: a fixed number of sequential calls
        return {
            name: (lambda c=call: drive(c, 1, 1, sizes.single_calls))
            for name, call in (("baseline", raw_call), ("direct", direct_call), ("ray", ray_call))
        }
    # A throughput figure: every side for the same time.
    return {
        "baseline": lambda: drive_for(
            raw_call, callers, min(callers, len(raw)), sizes.round_seconds
        ),
        "direct": lambda: drive_for(direct_call, callers, callers, sizes.round_seconds),
        "ray": lambda: drive_for(ray_call, callers, callers, sizes.round_seconds),
    }


async def _latency_rows(result: dict[str, Rounds], sizes: _Sizes) -> list[dict[str, Any]]:
    async_p50 = await _async_actor_p50(sizes.single_calls)
    base_latency = result["baseline"].median_latencies().percentiles_ms()
    rows = []
    for side, suffix in (("direct", ""), ("ray", ", Ray transport")):
        latency = result[side].median_latencies().percentiles_ms()
        row = figure(
            f"Ray single-call latency p50{suffix}",
            latency["p50_ms"],
            base_latency["p50_ms"],
            "ms",
            baseline_name="raw Ray actor call",
            lower_is_better=True,
            transport=side,
            latency=latency,
            baseline_latency=base_latency,
            async_actor_p50_ms=async_p50,
            note=(
                f"an async Ray actor (what a silo is) answers a bare call in "
                f"{async_p50:.2f} ms p50 in the same session"
            ),
        )
        if side == "direct":
            row["target"] = f"<= {P50_TARGET:g}x"
            row["meets_target"] = row["ratio"] <= P50_TARGET
        rows.append(row)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m raygrain.benchmarks.ray_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--address", default=None, help="join this Ray cluster")
    arguments = parser.parse_args()
    for result_row in asyncio.run(run(arguments.quick, address=arguments.address)):
        print(
            f"{result_row['name']}: {result_row['value']:,.2f} vs "
            f"{result_row['baseline']:,.2f} {result_row['unit']} ({result_row['ratio']:.2f}x)"
            + (f"; {result_row['note']}" if "async_actor_p50_ms" in result_row else "")
        )
