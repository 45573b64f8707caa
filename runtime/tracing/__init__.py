"""Tracing: W3C trace context across actor calls, OpenTelemetry spans when it is installed.

See docs/observability.md. ``Tracing`` is the silo extension, ``TraceFilter`` the call filter
every caller runs; ``current_traceparent`` is the context of the running turn.
"""

from raygrain.runtime.tracing._context import (
    current_traceparent,
    format_traceparent,
    parse_traceparent,
)
from raygrain.runtime.tracing._extension import TraceFilter, Tracing, otel_available
from raygrain.runtime.tracing._settings import TracingSettings

__all__ = [
    "TraceFilter",
    "Tracing",
    "TracingSettings",
    "current_traceparent",
    "format_traceparent",
    "otel_available",
    "parse_traceparent",
]
