"""The streams' view of the shared event log (``storage.EventLog``, issue 20's).

A durable stream ``(namespace, key)`` is the log stream ``StreamId.log_name()`` in the category
``namespace``; its versions (1, 2, ...) are the stream's positions. Dead letters are log
streams too, in the category ``$dead-letters`` (a leading ``$`` is refused in a namespace, so
no user stream can be one). Event data is the ``actors`` codec's bytes, so any value a call
can carry can be an event.
"""

from __future__ import annotations

from typing import Any

from raygrain.actors import ActorId, InvalidStreamError, StreamId
from raygrain.storage import EventLog, NewEvent

__all__ = [
    "DEAD_LETTERS",
    "event_log",
    "new_event",
    "parse_log_name",
    "positions_id",
    "record_id",
    "require_log",
]

DEAD_LETTERS = "$dead-letters"


def event_log(storage: Any) -> EventLog | None:
    """The provider's event log, if it has one (a wrapped provider passes it through)."""
    needed = ("append", "read_stream", "read_category")
    return storage if all(callable(getattr(storage, n, None)) for n in needed) else None


def require_log(storage: Any, stream: StreamId) -> EventLog:
    log = event_log(storage)
    if log is None:
        raise InvalidStreamError(
            f"stream {stream} is durable, but the cluster's storage provider "
            f"({type(storage).__name__}) has no event log; use a provider with one, or list "
            f"{stream.namespace!r} in StreamSettings.fast"
        )
    return log


def new_event(kind: str, data: bytes, event_id: str) -> NewEvent:
    return NewEvent(kind, data, event_id)


def parse_log_name(name: str) -> StreamId:
    """The ``StreamId`` whose ``log_name()`` is ``name``."""
    namespace, tag, key = name.split("|", 2)
    return StreamId(namespace, int(key) if tag == "i" else key)


def record_id(kind: str, name: str) -> ActorId:
    """The id of one of the streams' own records in the state store (subscriptions of a
    stream, a consumer's positions, a namespace's sweep checkpoint)."""
    return ActorId(f"$streams.{kind}", name)


def positions_id(consumer: ActorId) -> ActorId:
    tag = "s" if isinstance(consumer.key, str) else "i"
    return record_id("positions", f"{consumer.type_name}|{tag}|{consumer.key}")
