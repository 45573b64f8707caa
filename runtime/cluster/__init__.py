"""``Cluster``: the user's handle on a set of silos, local or on Ray, and the client in it."""

from raygrain.runtime.cluster._cluster import Cluster

__all__ = ["Cluster"]
