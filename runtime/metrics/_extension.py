"""Metrics as a silo capability, through the kernel's extension surface.

``Metrics`` (the extension) takes every turn's duration (``turn_timings``), counts activations
and deactivations, wraps the silo's storage provider to time it, follows the membership view,
and adds the figures ``raygrain status`` shows to ``Silo.stats()``. ``CallMetrics`` (a call
observer) takes the durations of the calls a caller makes, a silo's or a client's. Both record
into a ``MetricRegistry`` that an exporter reads. The hot path is the kernel's: it finds a
``_Series`` once per actor type and method and appends each duration to its histogram's
pending list, with no call into this room per call (the histogram counts its pending values
into buckets in batches, and the turns above the slow-turn threshold with them).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from raygrain.actors import DeactivationReason, decode
from raygrain.runtime.events import EventsService
from raygrain.runtime.kernel import (
    Activation,
    Extension,
    MembershipView,
    Response,
    Silo,
    SiloStatus,
    installed_version,
)
from raygrain.runtime.metrics._catalog import CallerMetrics, SiloMetrics
from raygrain.runtime.metrics._registry import (
    CounterChild,
    HistogramChild,
    Labels,
    MetricRegistry,
    items_of,
    keys_of,
    values_of,
)
from raygrain.runtime.metrics._settings import MetricsSettings
from raygrain.runtime.metrics._storage import ObservedStorage
from raygrain.runtime.timers import TimeService
from raygrain.runtime.transactions import Transactions
from raygrain.storage import StorageProvider

__all__ = ["CallMetrics", "Metrics", "error_type"]


def error_type(response: Response) -> str:
    """The class name of the error a failed response carries (cheap: no rebuilding it)."""
    try:
        return str(decode(response.payload)[1]).rsplit(".", 1)[-1]
    except Exception:
        return "undecodable"


class CallMetrics:
    """Records each call a caller makes, timed from sending to its response (``side="caller"``).
    A ``CallObserver``: the caller reads the clock and appends each call's duration to the
    series of its type and method (``call_timings``); this only counts failures."""

    def __init__(self, registry: MetricRegistry, metrics: CallerMetrics | None = None) -> None:
        self.registry = registry
        self.metrics = metrics or CallerMetrics(registry)

    def call_timings(self, type_name: str, method: str) -> _Series:
        return _Series(self.metrics, "caller", type_name, method)


class _Series:
    """One actor type and method's calls or turns: the kernel appends their durations to
    ``pending``, which is the duration histogram's own list (its readers count them)."""

    __slots__ = ("duration", "errors", "labels", "pending")

    def __init__(self, metrics: CallerMetrics, side: str, type_name: str, method: str) -> None:
        self.duration = metrics.duration.histogram(side, type_name, method)
        self.pending = self.duration.pending
        self.errors = metrics.errors
        self.labels = (side, type_name, method)

    def flush(self) -> None:
        self.duration.flush()

    def failed(self, error: Exception | Response) -> None:
        name = error_type(error) if isinstance(error, Response) else type(error).__name__
        self.errors.counter(*self.labels, name).inc()


class Metrics(Extension):
    """A silo's metrics. ``registry`` holds them for an exporter to read."""

    def __init__(self, settings: MetricsSettings) -> None:
        self.settings = settings
        self.registry = MetricRegistry({"deployment": settings.label}, settings.max_label_values)
        self._silo: Silo | None = None
        self.metrics = SiloMetrics(
            self.registry, self._activations, self._mailboxes, self._projections
        )
        self._slow = settings.slow_turn_seconds
        self._dead: set[str] = set()
        self.storage: ObservedStorage | None = None
        self._filter = CallMetrics(self.registry, self.metrics)

    # -- the extension surface ----------------------------------------------------------------

    def wrap_storage(self, storage: StorageProvider) -> StorageProvider:
        self.storage = ObservedStorage(storage, self.metrics.storage)
        return self.storage

    def attach(self, silo: Silo) -> None:
        self._silo = silo
        self.registry.constant_labels["silo"] = silo.name
        transactions = silo.extension(Transactions)
        if transactions is not None:
            transactions.coordinator.observers.append(self)
        time_service = silo.extension(TimeService)
        if time_service is not None:
            time_service.lateness_observers.append(self.reminder_late)

    def start(self, silo: Silo) -> None:
        if self.storage is not None:
            self.storage.attach()

    async def stop(self, silo: Silo) -> None:
        if self.storage is not None:
            self.storage.detach()

    def reminder_late(self, type_name: str, seconds: float) -> None:
        self.metrics.reminder_lateness.histogram(type_name).observe(max(0.0, seconds))

    def commit_ended(
        self, txid: str, committed: bool, reason: str, phases: list[tuple[str, float, float]]
    ) -> None:
        if committed:
            outcome = "committed"
        elif reason == "in_doubt":  # stored everywhere or nowhere, not known which: no abort
            outcome, reason = "in_doubt", ""
        else:
            outcome = "aborted"
        self.metrics.transactions.counter(outcome, reason).inc()

    def call_filter(self) -> CallMetrics:
        return self._filter

    def turn_timings(self, type_name: str, method: str) -> _Series:
        series = _Series(self.metrics, "callee", type_name, method)
        series.duration.threshold = self._slow  # slow turns: counted as the values are
        return series

    def activated(self, activation: Activation) -> None:
        type_name = activation.actor_id.type_name
        self.metrics.activated.counter(type_name).inc()
        # ``last_used`` still holds when the activation was created: no turn has run yet.
        clock = activation.silo.clock
        self.metrics.activation_duration.histogram(type_name).observe(
            max(0.0, clock.now() - activation.last_used)
        )

    def deactivating(self, activation: Activation, reason: DeactivationReason) -> None:
        self.metrics.deactivated.counter(activation.actor_id.type_name, reason.value).inc()

    def view_changed(self, silo: Silo, view: MembershipView) -> None:
        self.metrics.view_version.value = view.version
        counts = Counter(status.value for _, status in view.silos)
        for status in SiloStatus:
            self.metrics.silos.counter(status.value).value = counts.get(status.value, 0)
        dead = set(view.dead())
        self.metrics.declared_dead.value += len(dead - self._dead)
        self._dead = dead

    def stats(self, silo: Silo) -> dict[str, Any]:
        """Cumulative figures for ``raygrain status`` (which turns them into rates)."""
        calls = errors = 0.0
        merged = [0] * (len(self.metrics.duration.bounds) + 1)
        for (side, _, _), child in self.metrics.duration.children.items():
            if side == "callee" and isinstance(child, HistogramChild):
                calls += child.count
                merged = [a + b for a, b in zip(merged, child.counts, strict=True)]
        for (side, *_), child in self.metrics.errors.children.items():
            if side == "callee" and isinstance(child, CounterChild):
                errors += child.value
        storage = self.storage
        return {
            "version": installed_version(),
            "time": time.time(),
            "turns": calls,
            "turn_errors": errors,
            "turn_buckets": merged,
            "turn_bounds": list(self.metrics.duration.bounds),
            "storage": type(storage.inner).__name__ if storage is not None else "-",
            "storage_errors": sum(
                c.value
                for c in self.metrics.storage.errors.children.values()
                if isinstance(c, CounterChild)
            ),
            "storage_last_error": storage.last_error if storage is not None else None,
        }

    # -- gauges read at export ------------------------------------------------------------------

    def _activations(self) -> dict[Labels, float]:
        silo = self._silo
        if silo is None:
            return {}
        # (Read on a scrape's thread, while the silo's loop changes these: see items_of.)
        counts = Counter(actor_id.type_name for actor_id in keys_of(silo.activations))
        for actor_id, pool in items_of(silo.workers):
            counts[actor_id.type_name] += len(pool)
        return {(name,): float(n) for name, n in counts.items()}

    def _projections(self, figure: str) -> dict[Labels, float]:
        events = self._silo.extension(EventsService) if self._silo is not None else None
        if events is None:
            return {}
        found: dict[Labels, float] = {}
        for name, runner in items_of(events.runners):
            values = runner.positions if figure == "position" else runner.lag_events()
            for category, value in items_of(values):
                found[(name, category)] = float(value)
        return found

    def _mailboxes(self) -> dict[Labels, float]:
        silo = self._silo
        if silo is None:
            return {}
        queued: Counter[str] = Counter()
        for activation in values_of(silo.activations):
            queued[activation.actor_id.type_name] += activation.queued()
        return {(name,): float(n) for name, n in queued.items()}
