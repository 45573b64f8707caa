"""Streams: durable (in the event log, ordered, at least once, positions committed with the
consumer's state) and fast (in memory) delivery of events to actors, dead letters, and
observers that actors push notifications to.

Plugs into the kernel as the ``StreamService`` extension; actors reach it as ``self.streams``,
clients as ``cluster.streams`` (``ClusterStreams``). See docs/streams.md.
"""

from raygrain.runtime.streams._api import ActorStreams, ClusterStreams, StreamRef
from raygrain.runtime.streams._extension import StreamService
from raygrain.runtime.streams._settings import StreamSettings

__all__ = ["ActorStreams", "ClusterStreams", "StreamRef", "StreamService", "StreamSettings"]
