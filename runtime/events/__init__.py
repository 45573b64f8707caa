"""Event sourcing and CQRS: event-sourced actors, projections (read models) and the consistency
level of each query. Plugs into the kernel as the ``EventsService`` extension.
"""

from raygrain.runtime.events._actor import EventSourcedActor, key_of_stream, stream_of
from raygrain.runtime.events._consistency import ReadResult, Session, Written
from raygrain.runtime.events._extension import EventsService
from raygrain.runtime.events._projection import (
    PROJECTION_KEY,
    Projection,
    Rows,
    Sql,
    SqlProjection,
)

__all__ = [
    "PROJECTION_KEY",
    "EventSourcedActor",
    "EventsService",
    "Projection",
    "ReadResult",
    "Rows",
    "Session",
    "Sql",
    "SqlProjection",
    "Written",
    "key_of_stream",
    "stream_of",
]
