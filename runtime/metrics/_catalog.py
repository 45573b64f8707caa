"""The metric set: every figure raygrain exports, by name (docs/observability.md has the table).

``SiloMetrics`` holds the families a silo records into and ``CallerMetrics`` those of a caller
(a silo's or a client's); both live in a ``MetricRegistry`` per endpoint.
"""

from __future__ import annotations

from collections.abc import Callable

from raygrain.runtime.metrics._registry import (
    Family,
    HistogramChild,
    Kind,
    Labels,
    MetricRegistry,
    items_of,
)
from raygrain.runtime.metrics._settings import LATENCY_BOUNDS, SIZE_BOUNDS

__all__ = ["CallerMetrics", "SiloMetrics", "StorageMetrics", "calls_of", "slow_turns_of"]


def calls_of(duration: Family) -> Callable[[], dict[Labels, float]]:
    """The call counts per series of a duration histogram (a counter that costs nothing more
    to record: every call is observed in the histogram anyway)."""
    return lambda: {
        values: float(c.count)
        for values, c in items_of(duration.children)
        if isinstance(c, HistogramChild)
    }


def slow_turns_of(duration: Family) -> Callable[[], dict[Labels, float]]:
    """The slow turns per series of the turns' (callee) duration histogram, whose children
    count the values above the threshold as they count them into buckets (see
    ``HistogramChild.threshold``)."""
    return lambda: {
        (type_name, method): float(c.above)
        for (side, type_name, method), c in items_of(duration.children)
        if side == "callee" and isinstance(c, HistogramChild) and c.threshold is not None
    }


class CallerMetrics:
    """Calls as their caller sees them: sent, failed, round-trip time."""

    def __init__(self, registry: MetricRegistry) -> None:
        self.registry = registry
        add = registry.add
        self.duration = add(
            "raygrain_call_duration_seconds",
            "Call latency: the caller's round trip (side=caller) or the callee's turn "
            "(side=callee), by actor type and method",
            Kind.HISTOGRAM,
            ("side", "type", "method"),
            LATENCY_BOUNDS,
        )
        self.calls = add(
            "raygrain_calls_total",
            "Calls completed (successfully or not), by side, actor type and method",
            Kind.COUNTER,
            ("side", "type", "method"),
            read=calls_of(self.duration),
        )
        self.errors = add(
            "raygrain_call_errors_total",
            "Calls that failed, by side, actor type, method and error type",
            Kind.COUNTER,
            ("side", "type", "method", "error"),
        )


class StorageMetrics:
    def __init__(self, registry: MetricRegistry) -> None:
        add = registry.add
        self.latency = add(
            "raygrain_storage_operation_seconds",
            "Storage operations' latency, by provider and operation (read, read_many, write, "
            "clear, write_many)",
            Kind.HISTOGRAM,
            ("provider", "operation"),
            LATENCY_BOUNDS,
        )
        self.errors = add(
            "raygrain_storage_errors_total",
            "Storage operations that failed, by provider, operation and error type",
            Kind.COUNTER,
            ("provider", "operation", "error"),
        )
        self.batch = add(
            "raygrain_storage_batch_size",
            "Records committed per storage transaction (group commit), by provider",
            Kind.HISTOGRAM,
            ("provider",),
            SIZE_BOUNDS,
        )


class SiloMetrics(CallerMetrics):
    """Everything a silo records (its caller's calls included)."""

    def __init__(
        self,
        registry: MetricRegistry,
        activations: Callable[[], dict[Labels, float]],
        mailboxes: Callable[[], dict[Labels, float]],
        projections: Callable[[str], dict[Labels, float]] = lambda _: {},
    ) -> None:
        super().__init__(registry)
        add = registry.add
        self.storage = StorageMetrics(registry)
        self.slow_turns = add(
            "raygrain_slow_turns_total",
            "Turns that took longer than the slow-turn threshold (MetricsSettings)",
            Kind.COUNTER,
            ("type", "method"),
            read=slow_turns_of(self.duration),
        )
        add(
            "raygrain_activations",
            "Activations in memory, by actor type",
            Kind.GAUGE,
            ("type",),
            read=activations,
        )
        add(
            "raygrain_projection_position",
            "The last feed position a projection running here applied, by source category",
            Kind.GAUGE,
            ("projection", "category"),
            read=lambda: projections("position"),
        )
        add(
            "raygrain_projection_lag_events",
            "Events of a source category a projection running here has not applied yet "
            "(the category's head, read every second, minus its position)",
            Kind.GAUGE,
            ("projection", "category"),
            read=lambda: projections("lag"),
        )
        add(
            "raygrain_mailbox_length",
            "Calls queued for their turn, summed over the activations of each actor type",
            Kind.GAUGE,
            ("type",),
            read=mailboxes,
        )
        self.activated = add(
            # Not raygrain_activations_total: exposition drops a counter's "_total" (Ray's
            # exporter, OpenMetrics), which would make it the gauge raygrain_activations.
            "raygrain_activations_created_total",
            "Activations created (on_activate ran), by actor type",
            Kind.COUNTER,
            ("type",),
        )
        self.deactivated = add(
            "raygrain_deactivations_total",
            "Activations deactivated, by actor type and reason",
            Kind.COUNTER,
            ("type", "reason"),
        )
        self.activation_duration = add(
            "raygrain_activation_duration_seconds",
            "Time from an actor's first call to its activation (state loaded, on_activate run)",
            Kind.HISTOGRAM,
            ("type",),
            LATENCY_BOUNDS,
        )
        self.reminder_lateness = add(
            "raygrain_reminder_lateness_seconds",
            "How late reminder ticks start: from the tick's scheduled time to its turn's start, "
            "by actor type",
            Kind.HISTOGRAM,
            ("type",),
            LATENCY_BOUNDS,
        )
        self.transactions = add(
            "raygrain_transactions_total",
            "Transactions this silo coordinated, by outcome (committed, aborted, in_doubt) and "
            "reason",
            Kind.COUNTER,
            ("outcome", "reason"),
        )
        self.view_version = add(
            "raygrain_membership_view_version",
            "The membership view version this silo routes by",
            Kind.GAUGE,
        ).counter()
        self.silos = add(
            "raygrain_membership_silos",
            "Silos in this silo's membership view, by status",
            Kind.GAUGE,
            ("status",),
        )
        self.declared_dead = add(
            "raygrain_silos_declared_dead_total",
            "Silos this silo saw declared dead",
            Kind.COUNTER,
        ).counter()
        self.answers_expired = add(
            "raygrain_client_answers_expired_total",
            "Answers dropped unpolled: their client never came for them (Ray transport)",
            Kind.COUNTER,
        ).counter()
        self.wire_batch = add(
            "raygrain_wire_batch_messages",
            "Messages per batch sent over the transport (Ray)",
            Kind.HISTOGRAM,
            (),
            SIZE_BOUNDS,
        ).histogram()
