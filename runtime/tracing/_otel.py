"""The OpenTelemetry side of tracing (imported only when ``opentelemetry`` is installed).

Spans are made with the tracer of the global ``TracerProvider`` the application configured
(OpenTelemetry's own rule: with none configured, spans are no-ops and nothing is recorded).
A turn's span becomes the current span inside the turn, so the spans an actor's method makes
itself nest under it; the kernel resets OpenTelemetry's context at every turn's start
(``turn_variable``), so one turn's span never leaks into the next turn on the same task.
"""

from __future__ import annotations

import contextvars
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace import propagation as trace_propagation

from raygrain.runtime.kernel import turn_variable
from raygrain.runtime.tracing._context import format_traceparent, parse_traceparent

__all__ = ["SpanKind", "end_span", "start_span", "traceparent_of_current", "tracer"]

_TRACER_NAME = "raygrain"


def _context_variable() -> contextvars.ContextVar[Any] | None:
    # OpenTelemetry keeps its current context in a ContextVar (the default runtime context);
    # registering it as a turn variable makes every turn start with an empty context.
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    variable = getattr(runtime, "_current_context", None)
    if not isinstance(variable, contextvars.ContextVar):
        return None
    turn_variable(variable, contextvars.Context().run(variable.get))
    return variable


_CONTEXT = _context_variable()
_RESETS_CONTEXT = _CONTEXT is not None
_SPAN_KEY = getattr(trace_propagation, "_SPAN_KEY", None)


def tracer() -> trace.Tracer:
    return trace.get_tracer(_TRACER_NAME)


def traceparent_of_current() -> str | None:
    """The ``traceparent`` of the current OpenTelemetry span, if there is a valid one."""
    if _CONTEXT is not None and _SPAN_KEY is not None:
        # Every call passes here: read the context directly (the public get_current_span is
        # four calls deep), and most calls have no span at all.
        span = _CONTEXT.get().get(_SPAN_KEY)
        if span is None:
            return None
        context = span.get_span_context()
    else:
        context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format_traceparent(context.trace_id, context.span_id, context.trace_flags.sampled)


def _parent(traceparent: str | None) -> Any:
    parsed = parse_traceparent(traceparent) if traceparent is not None else None
    if parsed is None:
        return None
    trace_id, span_id, sampled = parsed
    remote = SpanContext(
        trace_id,
        span_id,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT),
    )
    return trace.set_span_in_context(NonRecordingSpan(remote))


def start_span(
    name: str,
    traceparent: str | None,
    attributes: dict[str, Any],
    kind: SpanKind = SpanKind.SERVER,
    start_time: int | None = None,
    make_current: bool = False,
) -> tuple[Span, str | None]:
    """A span (child of ``traceparent``, else of the current span) and its own
    ``traceparent`` (None when it records nothing and has no valid context)."""
    parent = _parent(traceparent)
    span = tracer().start_span(
        name, context=parent, kind=kind, attributes=attributes, start_time=start_time
    )
    if make_current and _RESETS_CONTEXT:
        otel_context.attach(trace.set_span_in_context(span))
    context = span.get_span_context()
    own = (
        format_traceparent(context.trace_id, context.span_id, context.trace_flags.sampled)
        if context.is_valid
        else None
    )
    return span, own


def end_span(span: Span, error: BaseException | None, end_time: int | None = None) -> None:
    if error is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    span.end(end_time=end_time)
