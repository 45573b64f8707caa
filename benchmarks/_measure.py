"""Shared measuring tools: latency percentiles, throughput figures, interleaved rounds.

A figure row is a plain dict built by ``figure``: name, value, baseline, ratio, unit, plus
optional extras the suite knows how to show (see ``benchmarks._suite``): ``latency`` and
``baseline_latency`` (percentiles in ms), ``concurrency`` and ``series`` (the throughput plot),
``timeline`` (``[[seconds, event], ...]``, the failover plot: a text event is marked, numbers
are drawn as a series, labelled by ``timeline_unit``), ``lower_is_better`` (latencies,
bytes, seconds), ``target`` (text) and ``meets_target``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Latencies",
    "Measurement",
    "Paired",
    "Rounds",
    "ScenarioSkipped",
    "drive",
    "drive_for",
    "figure",
    "interleave",
    "now",
    "paired",
]


@dataclass
class Latencies:
    """Latency samples in seconds; percentiles by rank over every sample, not averages."""

    samples: list[float] = field(default_factory=list)

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)

    def percentiles_ms(self) -> dict[str, float]:
        ordered = sorted(self.samples)
        if not ordered:
            return {}

        def rank(q: float) -> float:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0

        return {
            "p50_ms": rank(0.50),
            "p90_ms": rank(0.90),
            "p99_ms": rank(0.99),
            "p99_9_ms": rank(0.999),
            "max_ms": ordered[-1] * 1000.0,
        }


def figure(name: str, value: float, baseline: float, unit: str, **extra: Any) -> dict[str, Any]:
    """One result row: a figure, the baseline it stands beside, and their ratio."""
    return {
        "name": name,
        "value": value,
        "baseline": baseline,
        "ratio": value / baseline if baseline else float("nan"),
        "unit": unit,
        **extra,
    }


now = time.perf_counter


class ScenarioSkipped(Exception):
    """Raised by a scenario's ``run`` that cannot run here (what it needs is missing); the
    suite reports it as skipped with this message instead of failing."""


# One measured round: (operations per second, the latencies of its operations).
Measurement = tuple[float, Latencies]


@dataclass
class Rounds:
    """Every round of one side of a comparison; the median round stands for the side."""

    rates: list[float] = field(default_factory=list)
    latencies: list[Latencies] = field(default_factory=list)

    def add(self, rate: float, latencies: Latencies) -> None:
        self.rates.append(rate)
        self.latencies.append(latencies)

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)

    def median_latencies(self) -> Latencies:
        """The latencies of the round whose rate is the median (the lower one of an even
        count), so that the percentiles and the rate describe the same round."""
        ordered = sorted(range(len(self.rates)), key=self.rates.__getitem__)
        return self.latencies[ordered[(len(ordered) - 1) // 2]]


async def interleave(
    sides: dict[str, Callable[[], Awaitable[Measurement]]], rounds: int, settle: float = 0.0
) -> dict[str, Rounds]:
    """Measure every side ``rounds`` times in turn, the order rotated each round (A B C,
    B C A, C A B, ...).

    On a shared, noisy machine a burst of foreign load then hits both sides alike instead of
    one whole side, and the median of each side's rounds discards the burst. The rotation
    keeps a side from always following the same neighbour (and inheriting its leftovers: the
    garbage and teardown of the cluster measured before it). With ``settle``, each round
    starts that many seconds after the previous one ended, so that no side is measured while
    the background work the other side left behind is still running.
    """
    results = {name: Rounds() for name in sides}
    order = list(sides.items())
    for round_index in range(rounds):
        shift = round_index % len(order)
        for name, measure in order[shift:] + order[:shift]:
            if settle:
                await asyncio.sleep(settle)
            results[name].add(*await measure())
    return results


@dataclass
class Paired:
    """The ratio of side A's rate to side B's over pairs of back-to-back rounds: ``ratio`` is
    the median pair's, ``quartiles`` the spread of the pairs' ratios."""

    ratios: list[float]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def quartiles(self) -> tuple[float, float]:
        if len(self.ratios) < 2:
            return (self.ratio, self.ratio)
        q1, _, q3 = statistics.quantiles(self.ratios, n=4)
        return (q1, q3)


async def paired(
    a: Callable[[], Awaitable[float]], b: Callable[[], Awaitable[float]], pairs: int
) -> Paired:
    """Side A's rate over side B's, measured in ``pairs`` pairs of short rounds, each pair back
    to back and in turn A B, B A, ... (each ``a()``/``b()`` one round's rate).

    For a small difference between two sides that can both stay set up (the same cluster with
    an option on and off): the speed of a shared machine drifts by more than the difference
    within seconds, and two rounds a few milliseconds apart see the same machine, where whole
    rounds seconds apart (``interleave``) do not. The median pair then discards the pairs a
    burst of foreign load split.
    """
    ratios = []
    for index in range(pairs):
        if index % 2:
            rate_b, rate_a = await b(), await a()
        else:
            rate_a, rate_b = await a(), await b()
        ratios.append(rate_a / rate_b)
    return Paired(ratios)


async def drive(
    call: Callable[[int, int], Awaitable[Any]], callers: int, targets: int, calls_per_caller: int
) -> Measurement:
    """``callers`` concurrent loops, each making ``calls_per_caller`` calls ``call(target,
    i)`` to its own target (``index % targets``); the rate and every call's latency."""
    latencies = Latencies()

    async def caller(index: int) -> None:
        target = index % targets
        for i in range(calls_per_caller):
            started = now()
            await call(target, i)
            latencies.add(now() - started)

    started = now()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    return callers * calls_per_caller / (now() - started), latencies


async def drive_for(
    call: Callable[[int, int], Awaitable[Any]], callers: int, targets: int, seconds: float
) -> Measurement:
    """Like ``drive``, for a time rather than a count: each caller calls until ``seconds``
    have passed, and the rate counts every call made over the time until the last one ended.

    Two sides of very different speeds are then measured over the same span: with a fixed
    count, the fast side's round can be so short that starting its callers and waiting for the
    last few weigh on its rate, while the slow side's does not.
    """
    latencies = Latencies()
    deadline = now() + seconds

    async def caller(index: int) -> None:
        target = index % targets
        i = 0
        while True:
            started = now()
            await call(target, i)
            ended = now()
            latencies.add(ended - started)
            if ended >= deadline:
                return
            i += 1

    started = now()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    return len(latencies.samples) / (now() - started), latencies
