"""raygrain's runtime: silos, placement, messaging, membership and hosting.

``Cluster.local(actors=[...])`` runs silos in this process; ``Cluster.ray(...)`` on Ray.
"""

from raygrain.runtime._clock import Clock, ManualClock, SystemClock
from raygrain.runtime._cluster import Cluster
from raygrain.runtime._logging import configure_logging
from raygrain.runtime._membership import FailureDetection, MembershipView, SiloStatus
from raygrain.runtime._ring import ConsistentHashRing
from raygrain.runtime._transactions import TransactionSettings

__all__ = [
    "Clock",
    "Cluster",
    "ConsistentHashRing",
    "FailureDetection",
    "ManualClock",
    "MembershipView",
    "SiloStatus",
    "SystemClock",
    "TransactionSettings",
    "configure_logging",
]
