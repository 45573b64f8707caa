"""OpenTelemetry set up for the trace tests: an in-memory exporter in this process, and in the
silo processes on Ray (``install``, run there by ``TracingSettings(setup=...)``) an exporter
that hands finished spans to a named Ray actor (``SpanSink``) the test reads them from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

SINK_NAME = "raygrain-test-span-sink"
SINK_NAMESPACE = "raygrain-tests"
SETUP = "tests.trace_sink:install"

_MEMORY: InMemorySpanExporter | None = None


def memory_exporter() -> InMemorySpanExporter:
    """This process's in-memory exporter (OpenTelemetry takes one global provider per process,
    so it is installed once and shared by the tests)."""
    global _MEMORY
    if _MEMORY is None:
        _MEMORY = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_MEMORY))
        trace.set_tracer_provider(provider)
    return _MEMORY


def span_record(span: ReadableSpan) -> dict[str, Any]:
    context = span.get_span_context()
    assert context is not None
    return {
        "name": span.name,
        "trace_id": context.trace_id,
        "span_id": context.span_id,
        "parent_id": span.parent.span_id if span.parent is not None else None,
        "attributes": dict(span.attributes or {}),
    }


class _SinkExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        import ray

        try:
            sink = ray.get_actor(SINK_NAME, namespace=SINK_NAMESPACE)
        except ValueError:
            return SpanExportResult.SUCCESS  # no trace test is listening
        sink.add.remote([span_record(span) for span in spans])
        return SpanExportResult.SUCCESS


def install() -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_SinkExporter()))
    trace.set_tracer_provider(provider)


class SpanSink:
    """The body of the Ray actor that collects the silos' spans."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []

    def add(self, spans: list[dict[str, Any]]) -> None:
        self.spans.extend(spans)

    def all(self) -> list[dict[str, Any]]:
        return self.spans
