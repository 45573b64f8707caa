"""Storage latency and errors: a provider wrapped to time every operation.

``ObservedStorage`` passes every call on to the provider it wraps and records how long it took
and how it failed; a provider that queues writes (``QueuedWrites``) keeps doing so through it.
A provider that commits in batches (``SqliteStorage.batch_observers``) reports each batch's
size.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from time import perf_counter
from typing import Any

from raygrain.actors import ActorId
from raygrain.runtime.metrics._catalog import StorageMetrics
from raygrain.runtime.metrics._registry import FLUSH_AT, HistogramChild
from raygrain.storage import (
    QueuedWrites,
    StateRecord,
    StateWrite,
    StorageProvider,
    TimedWrites,
)

__all__ = ["ObservedStorage"]


class ObservedStorage:
    """``inner`` with every operation timed (``raygrain_storage_operation_seconds``)."""

    write_many: Callable[[Sequence[StateWrite]], Coroutine[Any, Any, list[str]]]
    read_many: Callable[[Sequence[ActorId]], Coroutine[Any, Any, list[StateRecord]]]
    queue_write: Callable[[ActorId, bytes, str | None, Callable[[str | Exception], object]], None]

    def __init__(self, inner: StorageProvider, metrics: StorageMetrics) -> None:
        self.inner = inner
        self._metrics = metrics
        provider = type(inner).__name__
        self._provider = provider
        self._latency: dict[str, HistogramChild] = {
            op: metrics.latency.histogram(provider, op)
            for op in ("read", "read_many", "write", "clear", "write_many")
        }
        self._write_latency = self._latency["write"]
        self.last_error: str | None = None
        if isinstance(inner, TimedWrites):
            # The provider times its queued writes, a batch at a time (``written``, ``failed``)
            # and is called directly: no wrapper of ours runs per write.
            self.queue_write = partial(inner.queue_timed_write, self)
        elif isinstance(inner, QueuedWrites):
            self.queue_write = self._queue_write
        # Only as atomic as the provider: one without write_many still has none through this.
        if hasattr(inner, "write_many"):
            self.write_many = self._write_many
        if hasattr(inner, "read_many"):  # (storage.ReadsMany)
            self.read_many = self._read_many
        observers = getattr(inner, "batch_observers", None)
        self._observers: list[Callable[[int], object]] | None = None
        if isinstance(observers, list):
            self._observers = observers
            self._batch = metrics.batch.histogram(provider)

    def attach(self) -> None:
        """Observe the provider's batches (the silo starts: not when the wrapper is made, so
        that a cluster built and never started, or whose start failed, leaves none behind to
        take the next cluster's batches)."""
        if self._observers is not None and self._batch_committed not in self._observers:
            self._observers.append(self._batch_committed)

    def _batch_committed(self, size: int) -> None:
        # A provider shared by several silos (in-process) reports each batch to every one: the
        # first of them still open records it, so that a cluster counts each batch once.
        for observe in self._observers or ():
            owner = getattr(observe, "__self__", None)
            if isinstance(owner, ObservedStorage):
                if owner is self:
                    self._batch.observe(size)
                return

    def detach(self) -> None:
        """Stop observing the provider's batches (the silo is closing; the provider may serve
        others, another cluster's included, which would go on reporting to this one)."""
        if self._observers is not None and self._batch_committed in self._observers:
            self._observers.remove(self._batch_committed)

    def _failed(self, operation: str, exc: BaseException) -> None:
        self.last_error = f"{operation}: {type(exc).__name__}"
        self._metrics.errors.counter(self._provider, operation, type(exc).__name__).inc()

    async def read(self, actor_id: ActorId) -> StateRecord:
        started = perf_counter()
        try:
            return await self.inner.read(actor_id)
        except Exception as exc:
            self._failed("read", exc)
            raise
        finally:
            self._latency["read"].observe(perf_counter() - started)

    async def _read_many(self, actor_ids: Sequence[ActorId]) -> list[StateRecord]:
        started = perf_counter()
        try:
            return list(await self.inner.read_many(actor_ids))  # type: ignore[attr-defined]
        except Exception as exc:
            self._failed("read_many", exc)
            raise
        finally:
            self._latency["read_many"].observe(perf_counter() - started)

    async def write(self, actor_id: ActorId, data: bytes, expected_etag: str | None) -> str:
        started = perf_counter()
        try:
            return await self.inner.write(actor_id, data, expected_etag)
        except Exception as exc:
            self._failed("write", exc)
            raise
        finally:
            self._latency["write"].observe(perf_counter() - started)

    async def clear(self, actor_id: ActorId, expected_etag: str | None) -> str:
        started = perf_counter()
        try:
            return await self.inner.clear(actor_id, expected_etag)
        except Exception as exc:
            self._failed("clear", exc)
            raise
        finally:
            self._latency["clear"].observe(perf_counter() - started)

    async def _write_many(self, writes: Sequence[StateWrite]) -> list[str]:
        started = perf_counter()
        try:
            return await self.inner.write_many(writes)
        except Exception as exc:
            self._failed("write_many", exc)
            raise
        finally:
            self._latency["write_many"].observe(perf_counter() - started)

    # -- the provider's timer of queued writes (``storage.WriteTimer``) ---------------------------

    def written(self, seconds: list[float]) -> None:
        latency = self._write_latency
        latency.pending.extend(seconds)
        if len(latency.pending) > FLUSH_AT:
            latency.flush()

    def failed(self, seconds: float, error: Exception) -> None:
        self._write_latency.observe(seconds)
        self._failed("write", error)

    def _queue_write(
        self,
        actor_id: ActorId,
        data: bytes,
        expected_etag: str | None,
        done: Callable[[str | Exception], object],
    ) -> None:
        self.inner.queue_write(  # type: ignore[attr-defined]
            actor_id, data, expected_etag, _TimedWrite((self, perf_counter(), done))
        )

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __getattr__(self, name: str) -> Any:
        # A provider's own extras (e.g. SqliteStorage.commits) stay reachable through it.
        return getattr(self.inner, name)


class _TimedWrite(tuple[ObservedStorage, float, Callable[[str | Exception], object]]):
    """A queued write's callback, ``(storage, started, done)``, for a provider that does not
    time its queued writes itself (``TimedWrites``): times the write, then tells the caller's
    ``done``. Not a closure: thousands wait at a time, and a closure is six
    objects for the garbage collector to go through (function, cells, their tuple); and a
    tuple, built in C with no ``__init__`` to run (the write path is hot)."""

    __slots__ = ()

    def __call__(self, outcome: str | Exception) -> object:
        storage, started, done = self
        pending = storage._write_latency.pending  # (HistogramChild.observe, inlined)
        pending.append(perf_counter() - started)
        if len(pending) > FLUSH_AT:
            storage._write_latency.flush()
        if isinstance(outcome, Exception):
            storage._failed("write", outcome)
        return done(outcome)
