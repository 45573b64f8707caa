"""The event log: append-only streams of events, grouped in categories, stored by the provider.

One log serves event-sourced actors (a stream per actor, a category per actor type), their
projections (which read a category's feed in position order) and durable streams. A stream's
events have versions 1, 2, 3, ... with (stream, version) unique; an append names the version it
expects the stream to be at, so a stale writer (a duplicate activation) cannot append. Each
category numbers its events 1, 2, 3, ... in commit order (its *position*): once a reader has seen
position p, no event at or below p appears later, so a feed reader that remembers the last
position it saw never misses one.

A projection commits its read model together with its offset through the provider's atomic
``StorageProvider.write_many``: the offset is a record like any other, and its ETag fences a
projection owner that lost its place.

``MemoryEventLog`` is the implementation in process memory (``MemoryStorage`` uses it); the
SQLite and PostgreSQL ones live beside their providers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from raygrain.actors import InvalidEventError, WrongExpectedVersionError, decode, encode

__all__ = [
    "Appended",
    "EncodedEvents",
    "EventLog",
    "MemoryEventLog",
    "NewEvent",
    "QueuedAppends",
    "StoredEvent",
    "check_append",
    "check_category_read",
    "check_encoded",
    "check_stream_read",
    "encoded_events",
    "repeated",
]


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append. ``type`` is its stable type name; ``data`` any value the raygrain
    codec encodes (dataclasses, dicts, lists, ...); ``event_id`` a unique id (a uuid) that
    makes a retried append idempotent. ``encoded``, when given, is ``data`` as the codec
    encoded it when the event was raised: what is stored, whatever happens to ``data``'s
    values after (a state that kept a reference to one of them and changed it)."""

    type: str
    data: Any
    event_id: str
    encoded: bytes | None = None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as stored: its ``version`` in its stream, its ``position`` in its category,
    and when it was recorded (seconds since the epoch, the appending process's clock)."""

    stream: str
    category: str
    version: int
    position: int
    type: str
    data: Any
    event_id: str
    recorded_at: float


@dataclass(frozen=True, slots=True)
class Appended:
    """What an append produced: the stream's version after it (its last event's) and that
    event's position in the category (the token a read-your-writes query waits for)."""

    version: int
    position: int


@runtime_checkable
class EventLog(Protocol):
    """Where events live. Every provider passes tests/storage/test_event_log.py."""

    async def append(
        self,
        stream: str,
        category: str,
        expected_version: int | None,
        events: Sequence[NewEvent] | EncodedEvents,
    ) -> Appended:
        """Append ``events`` atomically if ``stream`` is at ``expected_version`` (0: no events
        yet; None: any version). Raises ``WrongExpectedVersionError`` otherwise, and nothing is
        appended. Idempotent: when every event id is already stored in ``stream`` (a retry
        after an unknown outcome), returns what that earlier append produced. ``events`` may
        come encoded already (``EncodedEvents``, what an event-sourced actor appends; checked
        again, not encoded again: ``checked_events`` does both kinds)."""
        ...

    async def read_stream(
        self, stream: str, from_version: int = 1, limit: int | None = None
    ) -> list[StoredEvent]:
        """The events of ``stream`` from version ``from_version`` on, in version order."""
        ...

    async def read_category(
        self, category: str, after_position: int = 0, limit: int = 1000
    ) -> list[StoredEvent]:
        """Up to ``limit`` events of ``category`` after ``after_position``, in position order."""
        ...

    async def head(self, category: str) -> int:
        """The latest position of ``category`` (0: no events)."""
        ...


@runtime_checkable
class QueuedAppends(Protocol):
    """Optional, for a log whose appends wait (group commit): it takes an append with a
    callback instead of a coroutine. An event-sourced actor then ends its turn from that
    callback rather than keeping the turn suspended in ``append`` until the commit (the same
    as ``QueuedWrites`` for state)."""

    def queue_append(
        self,
        stream: str,
        category: str,
        expected_version: int | None,
        events: Sequence[NewEvent] | EncodedEvents,
        done: Callable[[Appended | Exception], object],
    ) -> None:
        """``append`` without awaiting. Bad input (``InvalidEventError``, a value the codec
        refuses) raises here, and nothing is queued; otherwise ``done`` gets what ``append``
        would return or raise, exactly once, on the event loop and never before this
        returns. ``events`` may come encoded already (``encoded_events``: checked again, not
        encoded again): a caller that may repeat the append keeps those, not the events."""
        ...


# -- checks every implementation makes before touching anything --------------------------------


def check_append(
    stream: str, category: str, expected_version: int | None, events: Sequence[NewEvent]
) -> None:
    check_target(stream, category, expected_version, events)
    for event in events:
        if not isinstance(event, NewEvent):
            raise InvalidEventError(f"stream {stream!r}: expected a NewEvent, got {event!r}")
        _check_event(stream, event.type, event.event_id)
    if len(events) > 1:
        _check_unique(stream, [event.event_id for event in events])


def check_encoded(
    stream: str, category: str, expected_version: int | None, events: EncodedEvents
) -> None:
    """``check_append`` for events that come encoded (``encoded_events``)."""
    if (
        len(events) == 1  # (the common case, checked in one place: a turn's one event)
        and type(stream) is str
        and stream
        and type(category) is str
        and category
        and (expected_version is None or (type(expected_version) is int and expected_version >= 0))
    ):
        event = events[0]
        if (
            type(event) is tuple
            and len(event) == 3
            and type(event[0]) is str
            and event[0]
            and type(event[1]) is bytes
            and type(event[2]) is str
            and event[2]
        ):
            return
    check_target(stream, category, expected_version, events)  # (what is wrong, by name)
    for event in events:
        if not (isinstance(event, tuple) and len(event) == 3 and isinstance(event[1], bytes)):
            raise InvalidEventError(
                f"stream {stream!r}: expected an encoded event (type, data, id), got {event!r}"
            )
        _check_event(stream, event[0], event[2])
    if len(events) > 1:
        _check_unique(stream, [event[2] for event in events])


def check_target(
    stream: str, category: str, expected_version: int | None, events: Sequence[Any]
) -> None:
    if not isinstance(stream, str) or not stream:
        raise InvalidEventError(f"an event stream needs a non-empty name, got {stream!r}")
    if not isinstance(category, str) or not category:
        raise InvalidEventError(f"stream {stream!r}: a category needs a name, got {category!r}")
    if expected_version is not None and (
        not isinstance(expected_version, int) or expected_version < 0
    ):
        raise InvalidEventError(
            f"stream {stream!r}: expected_version must be an int >= 0 or None, "
            f"got {expected_version!r}"
        )
    if not events:
        raise InvalidEventError(f"stream {stream!r}: an append needs at least one event")


def _check_event(stream: str, type_name: Any, event_id: Any) -> None:
    if not isinstance(type_name, str) or not type_name:
        raise InvalidEventError(f"stream {stream!r}: an event needs a type name")
    if not isinstance(event_id, str) or not event_id:
        raise InvalidEventError(f"stream {stream!r}: an event needs a non-empty event_id")


def _check_unique(stream: str, ids: list[str]) -> None:
    seen: set[str] = set()
    for event_id in ids:
        if event_id in seen:
            raise InvalidEventError(
                f"stream {stream!r}: event id {event_id!r} appears twice in one append"
            )
        seen.add(event_id)


def check_stream_read(stream: str, from_version: int, limit: int | None) -> None:
    if not isinstance(from_version, int) or from_version < 1:
        raise InvalidEventError(f"stream {stream!r}: from_version must be >= 1")
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise InvalidEventError(f"stream {stream!r}: limit must be >= 0 or None")


def check_category_read(category: str, after_position: int, limit: int) -> None:
    if not isinstance(after_position, int) or after_position < 0:
        raise InvalidEventError(f"category {category!r}: after_position must be >= 0")
    if not isinstance(limit, int) or limit < 1:
        raise InvalidEventError(f"category {category!r}: limit must be >= 1")


class EncodedEvents(list[tuple[str, bytes, str]]):
    """Events as a log stores them: (type, encoded data, event id) each (``encoded_events``).

    A caller that may send an append again (a retry after an outcome it does not know, with
    the same ids) keeps these rather than the events: the bytes are what a retry must repeat,
    and they leave no object per event for the garbage collector to trace until the commit.
    (An event-sourced turn keeps its append this way: holding each turn's ``NewEvent`` and its
    field map until the batch committed made twice as many collections under 1,000 writers.)
    """

    __slots__ = ()


def encoded_events(events: Sequence[NewEvent] | EncodedEvents) -> EncodedEvents:
    """(type, encoded data, event id) of each event (``events`` itself if it came encoded);
    a value the codec refuses raises ``SerializationError`` here, in the caller, before
    anything is queued."""
    if isinstance(events, EncodedEvents):
        return events
    return EncodedEvents(
        [(e.type, encode(e.data) if e.encoded is None else e.encoded, e.event_id) for e in events]
    )


def checked_events(
    stream: str,
    category: str,
    expected_version: int | None,
    events: Sequence[NewEvent] | EncodedEvents,
) -> EncodedEvents:
    """An append's events checked (``InvalidEventError``) and encoded, as a log stores them."""
    if isinstance(events, EncodedEvents):
        check_encoded(stream, category, expected_version, events)
        return events
    check_append(stream, category, expected_version, events)
    return encoded_events(events)


def repeated(stream: str, ids: Sequence[str], found: dict[str, tuple[int, int]]) -> Appended | None:
    """The outcome of an append whose ids are already stored (``found``: id -> (version,
    position) of those stored in ``stream``): None if none is, the earlier append's result if
    all are, ``InvalidEventError`` if only some are."""
    if not found:
        return None
    if len(found) != len(ids):
        raise InvalidEventError(
            f"stream {stream!r}: {len(found)} of this append's {len(ids)} event ids are "
            "already stored; an append is repeated whole or not at all"
        )
    version, position = found[ids[-1]]
    return Appended(version, position)


def wrong_version(stream: str, expected: int, actual: int) -> WrongExpectedVersionError:
    return WrongExpectedVersionError(stream, expected, actual)


def other_category(stream: str, category: str, stored: str) -> InvalidEventError:
    return InvalidEventError(f"stream {stream!r} belongs to category {stored!r}, not {category!r}")


class MemoryEventLog:
    """The event log in process memory (``MemoryStorage`` uses it). Events are encoded and
    decoded on the way in and out, as a real store would, so that a stored event never shares
    objects with its caller."""

    def __init__(self) -> None:
        self._streams: dict[str, list[tuple[int, str, bytes, str, float]]] = {}
        self._stream_category: dict[str, str] = {}
        self._categories: dict[str, list[tuple[str, int]]] = {}  # position - 1 -> (stream, v)
        self._ids: dict[str, dict[str, int]] = {}  # stream -> event id -> version

    async def _pause(self) -> None:
        """Every operation passes here first (``MemoryStorage``: closed check, latency)."""

    async def append(
        self,
        stream: str,
        category: str,
        expected_version: int | None,
        events: Sequence[NewEvent] | EncodedEvents,
    ) -> Appended:
        encoded = checked_events(stream, category, expected_version, events)
        await self._pause()
        # From here to the end no await: the append is atomic.
        stored_category = self._stream_category.get(stream)
        if stored_category is not None and stored_category != category:
            raise other_category(stream, category, stored_category)
        rows = self._streams.get(stream, [])
        ids = [event_id for _, _, event_id in encoded]
        known = self._ids.get(stream, {})
        found = {i: (known[i], rows[known[i] - 1][0]) for i in ids if i in known}
        earlier = repeated(stream, ids, found)
        if earlier is not None:
            return earlier
        if expected_version is not None and expected_version != len(rows):
            raise wrong_version(stream, expected_version, len(rows))
        feed = self._categories.setdefault(category, [])
        self._stream_category[stream] = category
        rows = self._streams.setdefault(stream, rows)
        known = self._ids.setdefault(stream, known)
        now = time.time()
        for type_, data, event_id in encoded:
            feed.append((stream, len(rows) + 1))
            known[event_id] = len(rows) + 1
            rows.append((len(feed), type_, data, event_id, now))
        return Appended(len(rows), len(feed))

    async def read_stream(
        self, stream: str, from_version: int = 1, limit: int | None = None
    ) -> list[StoredEvent]:
        check_stream_read(stream, from_version, limit)
        await self._pause()
        rows = self._streams.get(stream, [])
        end = len(rows) if limit is None else min(len(rows), from_version - 1 + limit)
        return [self._event(stream, version) for version in range(from_version, end + 1)]

    async def read_category(
        self, category: str, after_position: int = 0, limit: int = 1000
    ) -> list[StoredEvent]:
        check_category_read(category, after_position, limit)
        await self._pause()
        feed = self._categories.get(category, [])
        return [self._event(*entry) for entry in feed[after_position : after_position + limit]]

    async def head(self, category: str) -> int:
        await self._pause()
        return len(self._categories.get(category, []))

    def _event(self, stream: str, version: int) -> StoredEvent:
        position, type_, data, event_id, recorded_at = self._streams[stream][version - 1]
        category = self._stream_category[stream]
        return StoredEvent(
            stream, category, version, position, type_, decode(data), event_id, recorded_at
        )
