"""raygrain's runtime: silos, placement, messaging, membership and hosting.

``Cluster.local(actors=[...])`` runs silos in this process; ``Cluster.ray(...)`` on Ray.
"""

from runtime._clock import Clock, ManualClock, SystemClock
from runtime._cluster import Cluster
from runtime._logging import configure_logging
from runtime._membership import FailureDetection, MembershipView, SiloStatus
from runtime._ring import ConsistentHashRing
from runtime._transactions import TransactionSettings

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
