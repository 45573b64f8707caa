"""In-process export: the registries of a local cluster as ``prometheus_client`` metrics.

``PrometheusExporter`` is a ``prometheus_client`` collector over the registries of every silo
and client of the cluster (read when scraped: recording costs nothing extra), served on an
optional HTTP port, and read back in Python with ``value()`` / ``text()`` (for tests).

``prometheus_client`` is imported when a port is served or the figures are first read, not
with raygrain: a process that never exports them does not carry its modules (about 10,000
objects that every full garbage collection would go through).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from raygrain.runtime.metrics._registry import Family, Kind, MetricRegistry

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

__all__ = ["PrometheusExporter"]


class _Collector:
    def __init__(self, registries: Callable[[], Iterable[MetricRegistry]]) -> None:
        self._registries = registries

    def collect(self) -> Iterator[Metric]:
        families: dict[str, list[Family]] = {}
        for registry in self._registries():
            for name, family in registry.families.items():
                families.setdefault(name, []).append(family)
        for name, group in families.items():
            yield _export(name, group)


def _le(bound: float) -> str:
    """A bucket's ``le`` label as Prometheus writes it ("0.005", "1.0", "+Inf")."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


def _export(name: str, group: list[Family]) -> Metric:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    first = group[0]
    labels = [*first.registry.constant_labels, *first.label_names]
    metric: Any
    if first.kind is Kind.HISTOGRAM:
        metric = HistogramMetricFamily(name, first.help, labels=labels)
    elif first.kind is Kind.COUNTER:
        metric = CounterMetricFamily(name.removesuffix("_total"), first.help, labels=labels)
    else:
        metric = GaugeMetricFamily(name, first.help, labels=labels)
    for family in group:
        for sample in family.samples():
            values = [sample.labels.get(label, "") for label in labels]
            if first.kind is Kind.HISTOGRAM:
                cumulative, buckets = 0, []
                for bound, count in zip((*family.bounds, float("inf")), sample.counts, strict=True):
                    cumulative += count
                    buckets.append((_le(bound), cumulative))
                metric.add_metric(values, buckets, sample.sum)
            else:
                metric.add_metric(values, sample.value)
    return metric  # type: ignore[no-any-return]


class PrometheusExporter:
    """The figures of ``registries()`` as Prometheus metrics, on ``port`` if one is given
    (0 picks a free port: see ``port``)."""

    def __init__(
        self, registries: Callable[[], Iterable[MetricRegistry]], port: int | None = None
    ) -> None:
        self._registries = registries
        self._registry: CollectorRegistry | None = None
        self.port: int | None = None
        self._server: Any = None
        if port is not None:
            from prometheus_client import start_http_server

            self._server, thread = start_http_server(port, addr="127.0.0.1", registry=self.registry)
            self.port = int(self._server.server_port)
            self._thread = thread

    @property
    def registry(self) -> CollectorRegistry:
        """The ``prometheus_client`` registry the figures are collected into."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry

            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(_Collector(self._registries))
        return self._registry

    def text(self) -> str:
        """The exposition text a scrape would get."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples named ``name`` (e.g. ``raygrain_calls_total`` or
        ``raygrain_call_duration_seconds_count``) whose labels include ``labels``."""
        total = 0.0
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = None
