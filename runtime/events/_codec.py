"""Events as stored: a stable type name and a map of fields, and the way back through upcasting.

An event class is a dataclass; its stored type name is ``__event_name__`` when the class sets
one, else its class name (not the module path: moving the class must not orphan its events).
Its data is the map of its fields, so that a later version of the class (a field added with a
default, a field dropped) still reads old events; an upcaster turns an older shape (or an old
type name) into the current one before the class is built.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import types
import typing
import uuid
from collections.abc import Callable
from typing import Any

from raygrain.actors import (
    ConfigurationError,
    InvalidEventError,
    SerializationError,
    StateDecodeError,
    encode,
)
from raygrain.storage import StoredEvent

__all__ = ["EventTypes", "Upcaster", "event_name"]

Upcaster = Callable[[str, dict[str, Any]], tuple[str, dict[str, Any]]]


class _EventIds:
    """Unique event ids, cheaply: a random prefix per process and a counter (a uuid4 per event
    cost a getrandom system call each, a visible share of an append). A forked child draws a
    prefix of its own, so two processes never hand out the same id."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        # (The prefix and the counter in hex, each id made in C: no Python frame per event.)
        self.next: Callable[[], str] = map(
            f"{uuid.uuid4().hex[:20]}{{:x}}".format, itertools.count()
        ).__next__


_event_ids = _EventIds()
os.register_at_fork(after_in_child=_event_ids.reset)  # (not a getpid system call per event)


def event_name(cls: type) -> str:
    name = cls.__dict__.get("__event_name__") or cls.__name__
    return str(name)


def _classes(declared: Any) -> tuple[type, ...]:
    if typing.get_origin(declared) in (typing.Union, types.UnionType):
        return typing.get_args(declared)
    return (declared,)


class EventTypes:
    """The event classes of one actor type, by stored name."""

    def __init__(self, owner: str, declared: Any) -> None:
        self.owner = owner
        self.by_name: dict[str, type] = {}
        # Each class's stored name and field names (what ``new`` needs, found once).
        self.fields: dict[type, tuple[str, tuple[str, ...]]] = {}
        for cls in _classes(declared):
            if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
                raise ConfigurationError(
                    f"{owner}: event types must be dataclasses (or a union of them), got {cls!r}"
                )
            name = event_name(cls)
            if name in self.by_name:
                raise ConfigurationError(
                    f"{owner}: two event classes share the stored name {name!r}; "
                    "give one an __event_name__"
                )
            self.by_name[name] = cls
            self.fields[cls] = (name, tuple(f.name for f in dataclasses.fields(cls)))

    def encoded(self, event: Any) -> tuple[str, bytes, str]:
        """``event`` as the log stores it: (stored type name, encoded fields, a new event id).
        Encoded when raised: the log stores the event as it was raised, even if ``apply``
        keeps one of its values in the state and a later event of the turn changes it."""
        known = self.fields.get(type(event))
        if known is None:
            expected = ", ".join(sorted(c.__name__ for c in self.fields))
            raise InvalidEventError(
                f"{self.owner}: {type(event).__name__} is not one of its event types ({expected})"
            )
        name, names = known
        try:
            if len(names) == 1:  # (most events: a third of the comprehension's time)
                only = names[0]
                data = encode({only: getattr(event, only)})
            else:
                data = encode({field: getattr(event, field) for field in names})
        except SerializationError as exc:
            raise SerializationError(f"{self.owner}: event {name}: {exc}") from None
        return name, data, _event_ids.next()

    def build(self, stored: StoredEvent, upcast: Upcaster) -> Any:
        """The event object of ``stored``, upcast to the current shape."""
        data = stored.data if isinstance(stored.data, dict) else {"value": stored.data}
        name, data = upcast(stored.type, dict(data))
        cls = self.by_name.get(name)
        if cls is None:
            raise StateDecodeError(
                f"{self.owner}: event {stored.stream}@{stored.version} has type {name!r}, which "
                f"is not one of its event types ({', '.join(sorted(self.by_name))}); "
                "add an upcaster that maps it"
            )
        names = self.fields[cls][1]
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as exc:
            raise StateDecodeError(
                f"{self.owner}: event {stored.stream}@{stored.version} ({name}) does not fit "
                f"{cls.__name__}: {exc}; add an upcaster for its old shape"
            ) from None
