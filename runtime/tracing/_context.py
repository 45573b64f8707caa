"""W3C trace context in raygrain's envelopes, with or without OpenTelemetry.

A call carries its caller's ``traceparent`` (``Request.traceparent``). Inside a turn,
``current_traceparent`` holds the context the turn runs in, so the calls it makes carry it on:
without OpenTelemetry that is the caller's context passed through unchanged (a trace is not
broken by a process that records nothing); with it, the turn's own span.
"""

from __future__ import annotations

from contextvars import ContextVar

from raygrain.runtime.kernel import turn_variable

__all__ = ["current_traceparent", "format_traceparent", "parse_traceparent"]

current_traceparent: ContextVar[str | None] = ContextVar("raygrain_traceparent", default=None)
turn_variable(current_traceparent, None)

_HEX = frozenset("0123456789abcdef")


def format_traceparent(trace_id: int, span_id: int, sampled: bool) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def parse_traceparent(value: str) -> tuple[int, int, bool] | None:
    """``(trace id, span id, sampled)`` of a valid version-00 ``traceparent``, else None (an
    invalid one is ignored, as the W3C recommendation says: the callee starts a new trace)."""
    parts = value.split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:
        return None
    if not all(set(p) <= _HEX for p in parts[1:4]):
        return None
    trace_id, span_id = int(parts[1], 16), int(parts[2], 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, bool(int(parts[3], 16) & 1)
