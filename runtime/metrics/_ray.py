"""Export on Ray: the registry of a silo (or a client) pushed to ``ray.util.metrics``.

Ray's metrics agent on each node serves what its processes record on the node's Prometheus
endpoint (and Ray's dashboard and Grafana read it there), so raygrain's figures need no setup
of their own on Ray. Recording stays in the cheap ``MetricRegistry``; every ``export_period``
the exporter pushes what changed: counters by their increase, gauges by their value, and a
histogram as the series Prometheus reads of one (``<name>_bucket`` with ``le``, ``_count``,
``_sum``), each a gauge of the cumulative figure: Ray's own ``Histogram`` takes one observation
at a time, which would cost a busy silo a Ray call per actor call. Ray names them
``ray_<name>`` on its endpoint.
"""

from __future__ import annotations

import asyncio
from typing import Any

from raygrain.runtime.kernel import get_logger
from raygrain.runtime.metrics._registry import Family, Kind, MetricRegistry

__all__ = ["RayExporter"]


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
                tags = sample.labels
                if family.kind is Kind.GAUGE:
                    metric.set(sample.value, tags=tags)
                elif family.kind is Kind.COUNTER:
                    key = (family.name, tuple(sorted(tags.items())))
                    before = self._last.get(key, 0.0)
                    if sample.value > before:
                        metric.inc(sample.value - before, tags=tags)
                    self._last[key] = sample.value
                else:
                    self._push_histogram(family, metric, sample.labels, sample.counts, sample.sum)

    def _push_histogram(
        self,
        family: Family,
        gauges: tuple[Any, Any, Any],
        tags: dict[str, str],
        counts: tuple[int, ...],
        total: float,
    ) -> None:
        # The series Prometheus' histogram_quantile reads, as gauges of the cumulative figures:
        # Ray's Histogram takes one observation per call, which would cost the silo as much
        # CPU per call as the call itself; this costs one set per bucket per push.
        buckets, count, sum_ = gauges
        cumulative = 0
        for bound, n in zip((*family.bounds, float("inf")), counts, strict=True):
            cumulative += n
            le = "+Inf" if bound == float("inf") else repr(float(bound))
            buckets.set(cumulative, tags={**tags, "le": le})
        count.set(cumulative, tags=tags)
        sum_.set(total, tags=tags)

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
            metric = (
                metrics.Gauge(f"{family.name}_bucket", family.help, tag_keys=(*tag_keys, "le")),
                metrics.Gauge(f"{family.name}_count", family.help, tag_keys=tag_keys),
                metrics.Gauge(f"{family.name}_sum", family.help, tag_keys=tag_keys),
            )
        self._metrics[family.name] = metric
        return metric

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.push()  # the last figures, for a silo stopping gracefully
