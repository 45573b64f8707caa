"""Shared measuring tools: latency percentiles and throughput figures for scenarios."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Latencies", "figure"]


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
