"""Which capabilities every silo and client runs: the runtime's composition root.

The kernel knows no capability; the hosts (``cluster``'s local backend and ``ray_host``) build
their silos with ``silo_extensions()`` and their clients' callers with ``client_filters()``.
A new capability adds itself here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from raygrain.actors import Actor
from raygrain.runtime.events import EventsService
from raygrain.runtime.kernel import CallFilter, CallObserver, Extension, Silo, SiloOptions
from raygrain.runtime.metrics import (
    CallMetrics,
    MetricRegistry,
    Metrics,
    MetricsSettings,
    RayExporter,
)
from raygrain.runtime.sagas import Saga, SagaIndex, SagaService
from raygrain.runtime.streams import StreamService
from raygrain.runtime.timers import TimeService
from raygrain.runtime.tracing import TraceFilter, Tracing, TracingSettings
from raygrain.runtime.transactions import TransactionFilter, Transactions

__all__ = [
    "actor_types",
    "client_filters",
    "export_to_ray",
    "metrics_registry",
    "silo_extensions",
]


def silo_extensions(options: SiloOptions | None = None) -> list[Extension]:
    """A fresh set of the extensions one silo runs (metrics unless they are switched off)."""
    options = options or SiloOptions()
    extensions: list[Extension] = [
        Transactions(),
        TimeService(),
        EventsService(),
        SagaService(),
        StreamService(),
    ]
    settings = options.setting(MetricsSettings, MetricsSettings())
    if settings.enabled:
        extensions.append(Metrics(settings))
    extensions.append(Tracing(options.setting(TracingSettings, TracingSettings())))
    return extensions


def actor_types(actors: Iterable[type[Actor[Any]]]) -> list[type[Actor[Any]]]:
    """The user's actor types, plus the actors of the capabilities they use (the saga index,
    when a saga is among them)."""
    found = list(actors)
    sagas = any(isinstance(cls, type) and issubclass(cls, Saga) for cls in found)
    if sagas and SagaIndex not in found:
        found.append(SagaIndex)
    return found


def client_filters(
    options: SiloOptions | None = None, metrics: bool = True
) -> tuple[CallFilter | CallObserver, ...]:
    """The filters a client's calls pass through (``metrics``: time them, if metrics are on)."""
    filters: list[CallFilter | CallObserver] = [TransactionFilter(), TraceFilter()]
    settings = (options or SiloOptions()).setting(MetricsSettings, MetricsSettings())
    if settings.enabled and metrics:
        registry = MetricRegistry(
            {"deployment": settings.label, "silo": "client"}, settings.max_label_values
        )
        filters.append(CallMetrics(registry))
    return tuple(filters)


def metrics_registry(
    endpoint: Silo | tuple[CallFilter | CallObserver, ...],
) -> MetricRegistry | None:
    """The metrics registry of a silo or of a client's filters, if metrics are on."""
    if isinstance(endpoint, Silo):
        metrics = endpoint.extension(Metrics)
        return metrics.registry if metrics is not None else None
    return next((f.registry for f in endpoint if isinstance(f, CallMetrics)), None)


def export_to_ray(silo: Silo, transport: Any) -> RayExporter | None:
    """Start pushing a Ray-hosted silo's metrics to Ray's metrics agent (and have its
    transport report its batch sizes); None with metrics off. ``aclose()`` it on stop."""
    metrics = silo.extension(Metrics)
    if metrics is None:
        return None
    transport.on_batch = metrics.metrics.wire_batch.observe
    transport.on_answers_expired = metrics.metrics.answers_expired.inc
    exporter = RayExporter(metrics.registry, metrics.settings.export_period)
    exporter.start()
    return exporter
