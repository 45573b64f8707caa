"""Export on Ray: the registry of a silo (or a client) pushed to ``ray.util.metrics``.

Ray's metrics agent on each node serves what its processes record on the node's Prometheus
endpoint (and Ray's dashboard and Grafana read it there), so raygrain's figures need no setup
of their own on Ray. Recording stays in the cheap ``MetricRegistry``; every ``export_period``
the exporter pushes what changed: counters by their increase, gauges by their value, and
histograms bucket by bucket (Ray's ``Histogram`` takes single observations, so each new one in
a bucket is observed at that bucket's midpoint: the bucket counts are exact, the sum is
approximate). Ray names them ``ray_<name>`` on its endpoint.
"""

from __future__ import annotations

import asyncio
from typing import Any

from raygrain.runtime.kernel import get_logger
from raygrain.runtime.metrics._registry import Family, Kind, MetricRegistry

__all__ = ["RayExporter"]


def _midpoints(bounds: tuple[float, ...]) -> list[float]:
    lower = (0.0, *bounds)
    points = [(lo + hi) / 2 for lo, hi in zip(lower, bounds, strict=False)]
    return [*points, bounds[-1] * 2 if bounds else 1.0]


class RayExporter:
    """Pushes ``registry`` to Ray's metrics agent every ``period`` seconds."""

    def __init__(self, registry: MetricRegistry, period: float) -> None:
        self.registry = registry
        self.period = period
        self._metrics: dict[str, Any] = {}
        self._last: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                self.push()
            except Exception as exc:  # an export failing must not stop the silo
                get_logger().warning("metrics_export_failed", error=repr(exc))

    def push(self) -> None:
        """Push what changed since the last push."""
        for family in list(self.registry.families.values()):
            metric = self._metrics.get(family.name) or self._declare(family)
            for sample in family.samples():
                key = (family.name, tuple(sorted(sample.labels.items())))
                tags = sample.labels
                if family.kind is Kind.GAUGE:
                    metric.set(sample.value, tags=tags)
                elif family.kind is Kind.COUNTER:
                    before = self._last.get(key, 0.0)
                    if sample.value > before:
                        metric.inc(sample.value - before, tags=tags)
                    self._last[key] = sample.value
                else:
                    before = self._last.get(key) or (0,) * len(sample.counts)
                    points = _midpoints(family.bounds)
                    for point, now, then in zip(points, sample.counts, before, strict=True):
                        for _ in range(now - then):
                            metric.observe(point, tags=tags)
                    self._last[key] = sample.counts

    def _declare(self, family: Family) -> Any:
        from ray.util import metrics

        tag_keys = (*self.registry.constant_labels, *family.label_names)
        metric: Any
        if family.kind is Kind.COUNTER:
            metric = metrics.Counter(
                family.name.removesuffix("_total"), family.help, tag_keys=tag_keys
            )
        elif family.kind is Kind.GAUGE:
            metric = metrics.Gauge(family.name, family.help, tag_keys=tag_keys)
        else:
            bounds = [float(b) for b in family.bounds]
            metric = metrics.Histogram(family.name, family.help, bounds, tag_keys=tag_keys)
        self._metrics[family.name] = metric
        return metric

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.push()  # the last figures, for a silo stopping gracefully
