"""raygrain's runtime: silos, placement, messaging, membership and hosting.

``Cluster.local(actors=[...])`` runs silos in this process; ``Cluster.ray(...)`` on Ray.
"""

from raygrain.runtime.cluster import Cluster
from raygrain.runtime.events import (
    EventSourcedActor,
    Projection,
    ReadResult,
    Rows,
    Session,
    Sql,
    SqlProjection,
    Written,
)
from raygrain.runtime.kernel import (
    Clock,
    ConsistentHashRing,
    ManualClock,
    MembershipView,
    SiloStatus,
    SystemClock,
    configure_logging,
)
from raygrain.runtime.membership import FailureDetection
from raygrain.runtime.metrics import MetricsSettings
from raygrain.runtime.sagas import (
    Retry,
    Saga,
    SagaPhase,
    SagaSettings,
    SagaStatus,
    StepContext,
    step,
)
from raygrain.runtime.streams import ClusterStreams, StreamRef, StreamSettings
from raygrain.runtime.timers import ReminderSettings
from raygrain.runtime.tracing import TracingSettings
from raygrain.runtime.transactions import TransactionSettings

__all__ = [
    "Clock",
    "Cluster",
    "ClusterStreams",
    "ConsistentHashRing",
    "EventSourcedActor",
    "FailureDetection",
    "ManualClock",
    "MembershipView",
    "MetricsSettings",
    "Projection",
    "ReadResult",
    "ReminderSettings",
    "Retry",
    "Rows",
    "Saga",
    "SagaPhase",
    "SagaSettings",
    "SagaStatus",
    "Session",
    "SiloStatus",
    "Sql",
    "SqlProjection",
    "StepContext",
    "StreamRef",
    "StreamSettings",
    "SystemClock",
    "TracingSettings",
    "TransactionSettings",
    "Written",
    "configure_logging",
    "step",
]
