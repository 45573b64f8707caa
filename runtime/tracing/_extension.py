"""Tracing as a silo capability: spans for turns, storage writes and transaction commits.

``TraceFilter`` stamps every outgoing call with the caller's ``traceparent``: the current
OpenTelemetry span's, or inside a turn the context the turn runs in. ``Tracing`` (the
extension) starts a span for every turn of a traced call, the child of the caller's span, and
ends it when the turn ends; it wraps storage to make spans for writes and follows the
transaction coordinator for commit phases. Without OpenTelemetry installed it only carries the
context through turns (``current_traceparent``), which costs a variable per turn.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from raygrain.actors import ActorId
from raygrain.runtime.kernel import Activation, Delivery, Extension, Request, Response, Silo
from raygrain.runtime.tracing._context import current_traceparent
from raygrain.runtime.tracing._settings import TracingSettings, run_setup
from raygrain.runtime.transactions import Transactions
from raygrain.storage import QueuedWrites, StateWrite, StorageProvider

try:
    from raygrain.runtime.tracing import _otel
except ImportError:  # the optional extra raygrain[otel] is not installed
    _otel = None  # type: ignore[assignment]

__all__ = ["TraceFilter", "Tracing", "otel_available"]

_KEY = "trace"


def otel_available() -> bool:
    return _otel is not None


class TraceFilter:
    """Carries the caller's trace context on every call it makes."""

    def outgoing(self, request: Request) -> Callable[[Response | None], None] | None:
        if _otel is not None:
            own = _otel.traceparent_of_current()
            request.traceparent = own if own is not None else current_traceparent.get()
        else:
            request.traceparent = current_traceparent.get()
        return None


class Tracing(Extension):
    """Turn spans (``<type>.<method>``), storage write spans and transaction commit spans."""

    def __init__(self, settings: TracingSettings | None = None) -> None:
        self.settings = settings or TracingSettings()
        self._silo_name = ""

    def attach(self, silo: Silo) -> None:
        self._silo_name = silo.name
        if self.settings.setup is not None and _otel is not None:
            run_setup(self.settings.setup)
        transactions = silo.extension(Transactions)
        if transactions is not None and _otel is not None:
            transactions.coordinator.observers.append(self)

    def call_filter(self) -> TraceFilter:
        return TraceFilter()

    def wrap_storage(self, storage: StorageProvider) -> StorageProvider:
        return TracedStorage(storage) if _otel is not None else storage

    def turn_started(self, activation: Activation, delivery: Delivery) -> None:
        traceparent = delivery.request.traceparent
        if traceparent is None:
            return
        if _otel is None:
            current_traceparent.set(traceparent)  # carried on, unchanged
            return
        actor_id = activation.actor_id
        span, own = _otel.start_span(
            f"{actor_id.type_name}.{delivery.method.name}",
            traceparent,
            {
                "raygrain.actor.type": actor_id.type_name,
                "raygrain.actor.key": str(actor_id.key),
                "raygrain.method": delivery.method.name,
                "raygrain.silo": self._silo_name,
            },
            make_current=True,
        )
        current_traceparent.set(own or traceparent)
        if delivery.extras is None:
            delivery.extras = {}
        delivery.extras[_KEY] = span

    def turn_ended(
        self, activation: Activation, delivery: Delivery, error: Exception | None, seconds: float
    ) -> None:
        extras = delivery.extras
        if extras is not None and _otel is not None:
            span = extras.pop(_KEY, None)
            if span is not None:
                _otel.end_span(span, error)

    def commit_ended(
        self, txid: str, committed: bool, reason: str, phases: list[tuple[str, float, float]]
    ) -> None:
        if _otel is None or not phases:
            return
        # Only a traced transaction makes spans, as only a traced call does: the commit runs
        # in the context of the turn or the client block that ends the transaction.
        parent = _otel.traceparent_of_current() or current_traceparent.get()
        if parent is None:
            return
        start, end = phases[0][1], phases[-1][2]
        span, own = _otel.start_span(
            "raygrain.transaction.commit",
            parent,
            {"raygrain.transaction.id": txid, "raygrain.transaction.committed": committed},
            kind=_otel.SpanKind.INTERNAL,
            start_time=int(start * 1e9),
        )
        for name, phase_start, phase_end in phases:
            child, _ = _otel.start_span(
                f"raygrain.transaction.{name}",
                own,
                {"raygrain.transaction.id": txid},
                kind=_otel.SpanKind.INTERNAL,
                start_time=int(phase_start * 1e9),
            )
            child.end(end_time=int(phase_end * 1e9))
        error = None if committed else RuntimeError(reason)
        _otel.end_span(span, error, int(end * 1e9))


class TracedStorage:
    """A span for every state write (``raygrain.storage.write``), child of the turn's span."""

    write_many: Callable[[Sequence[StateWrite]], Coroutine[Any, Any, list[str]]]

    def __init__(self, inner: StorageProvider) -> None:
        self.inner = inner
        self._provider = _provider_name(inner)
        if isinstance(inner, QueuedWrites):
            self.queue_write = self._queue_write
        # Only as atomic as the provider: one without write_many still has none through this.
        if hasattr(inner, "write_many"):
            self.write_many = self._write_many

    def _span(self, operation: str, actor_id: ActorId | None) -> Any:
        assert _otel is not None
        attributes = {"raygrain.storage.provider": self._provider}
        if actor_id is not None:
            attributes["raygrain.actor.type"] = actor_id.type_name
        span, _ = _otel.start_span(
            f"raygrain.storage.{operation}", None, attributes, kind=_otel.SpanKind.CLIENT
        )
        return span

    async def read(self, actor_id: ActorId) -> Any:
        return await self.inner.read(actor_id)

    async def write(self, actor_id: ActorId, data: bytes, expected_etag: str | None) -> str:
        if not _traced():
            return await self.inner.write(actor_id, data, expected_etag)
        span = self._span("write", actor_id)
        try:
            etag = await self.inner.write(actor_id, data, expected_etag)
        except Exception as exc:
            _end(span, exc)
            raise
        _end(span, None)
        return etag

    async def clear(self, actor_id: ActorId, expected_etag: str | None) -> str:
        return await self.inner.clear(actor_id, expected_etag)

    async def _write_many(self, writes: Sequence[StateWrite]) -> list[str]:
        if not _traced():
            return await self.inner.write_many(writes)
        span = self._span("write_many", None)
        try:
            etags = await self.inner.write_many(writes)
        except Exception as exc:
            _end(span, exc)
            raise
        _end(span, None)
        return etags

    def _queue_write(
        self,
        actor_id: ActorId,
        data: bytes,
        expected_etag: str | None,
        done: Callable[[str | Exception], object],
    ) -> None:
        queue_write = self.inner.queue_write  # type: ignore[attr-defined]
        if not _traced():
            queue_write(actor_id, data, expected_etag, done)
            return
        span = self._span("write", actor_id)

        def written(outcome: str | Exception) -> object:
            _end(span, outcome if isinstance(outcome, Exception) else None)
            return done(outcome)

        queue_write(actor_id, data, expected_etag, written)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _provider_name(storage: object) -> str:
    """The class name of the provider under the silo's wrappers (metrics' ``ObservedStorage``
    wraps it before tracing does; each keeps what it wraps as ``inner``)."""
    while (inner := getattr(storage, "inner", None)) is not None:
        storage = inner
    return type(storage).__name__


def _traced() -> bool:
    """Whether the current turn is traced (a write outside a traced turn makes no span)."""
    return current_traceparent.get() is not None


def _end(span: Any, error: BaseException | None) -> None:
    assert _otel is not None
    _otel.end_span(span, error)
