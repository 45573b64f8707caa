"""Metrics: what a silo and its callers record, and its export to Prometheus or Ray.

See docs/observability.md for the metric set. ``Metrics`` is the silo extension and
``CallMetrics`` the filter timing a client's calls; both record into a ``MetricRegistry``,
which ``PrometheusExporter`` (in-process) or ``RayExporter`` (on Ray) exports.
"""

from raygrain.runtime.metrics._extension import CallMetrics, Metrics, error_type
from raygrain.runtime.metrics._prometheus import PrometheusExporter
from raygrain.runtime.metrics._ray import RayExporter
from raygrain.runtime.metrics._registry import OVERFLOW, Kind, MetricRegistry
from raygrain.runtime.metrics._settings import MetricsSettings

__all__ = [
    "OVERFLOW",
    "CallMetrics",
    "Kind",
    "MetricRegistry",
    "Metrics",
    "MetricsSettings",
    "PrometheusExporter",
    "RayExporter",
    "error_type",
]
