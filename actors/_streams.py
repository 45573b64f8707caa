"""What an actor sees of streams and observers (``self.streams``); the runtime implements it.

A stream is named by ``StreamId(namespace, key)``. Producers publish to it; consumers are
actors, subscribed implicitly (``@implicit_subscription("ns")``: the consumer of stream key K
is the actor of that class with key K, Orleans' implicit subscriptions) or explicitly
(``await self.streams.subscribe(stream)``, stored until ``unsubscribe``). Each event reaches a
consumer as a turn calling ``on_stream_event(event)``. Observers are objects a client or an
actor hands to an actor as an ``ObserverRef``, to be told things without a reply. This module
only names these things, so that ``actors`` never imports the runtime. See docs/streams.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from raygrain.actors._codec import encode
from raygrain.actors._errors import InvalidCallError, InvalidStreamError, SerializationError
from raygrain.actors._identity import ActorId, ActorKey
from raygrain.actors._ref import current_invoker

__all__ = [
    "DeadLetter",
    "ObserverRef",
    "Stream",
    "StreamEvent",
    "StreamId",
    "Streams",
    "Subscription",
    "implicit_namespaces",
    "implicit_subscription",
]

C = TypeVar("C", bound=type)


@dataclass(frozen=True, slots=True)
class StreamId:
    """A stream: a ``namespace`` (which also chooses its delivery mode) and a ``key``."""

    namespace: str
    key: ActorKey

    def __post_init__(self) -> None:
        if not isinstance(self.namespace, str) or not self.namespace:
            raise InvalidStreamError(
                f"a stream namespace must be a non-empty string, got {self.namespace!r}"
            )
        if "|" in self.namespace or self.namespace.startswith("$"):
            raise InvalidStreamError(
                f"stream namespace {self.namespace!r}: '|' and a leading '$' are reserved"
            )
        if not isinstance(self.key, (str, int)) or isinstance(self.key, bool):
            raise InvalidStreamError(
                f"the key of a stream in {self.namespace!r} must be str or int, "
                f"got {type(self.key).__name__} {self.key!r}"
            )

    def log_name(self) -> str:
        """Its name in the event log (``"1"`` and ``1`` are different streams)."""
        tag = "s" if isinstance(self.key, str) else "i"
        return f"{self.namespace}|{tag}|{self.key}"

    def __str__(self) -> str:
        return f"{self.namespace}/{self.key!r}"


@dataclass(frozen=True, slots=True)
class Subscription:
    """An explicit subscription of ``consumer`` to ``stream`` (``id`` is unique)."""

    id: str
    stream: StreamId
    consumer: ActorId


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One event as a consumer receives it. ``position``: its version in the stream (1, 2,
    ...) on a durable stream, 0 on a fast one. ``subscription``: ``"implicit"`` or the id of
    the explicit subscription it was delivered for. ``replay``: delivered again from the dead
    letters (outside the stream's order)."""

    stream: StreamId
    data: Any
    position: int
    subscription: str
    event_id: str
    replay: bool = False


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event a consumer failed on ``attempts`` times: set aside, its position passed.
    ``data``: the event; ``error``: the last error's repr; ``replayed``: replayed since."""

    id: str
    stream: StreamId
    position: int
    consumer: ActorId
    subscription: str
    error: str
    attempts: int
    data: Any
    event_id: str
    replayed: bool = False


def implicit_subscription(*namespaces: str) -> Callable[[C], C]:
    """Class decorator: the actor with key K consumes every stream ``(namespace, K)`` of these
    namespaces (no subscription is stored; it is activated by the first event)."""
    for namespace in namespaces:
        StreamId(namespace, "")  # a bad namespace fails here
    if not namespaces:
        raise InvalidStreamError("implicit_subscription needs at least one namespace")

    def mark(cls: C) -> C:
        inherited = implicit_namespaces(cls)
        cls.__implicit_streams__ = (  # type: ignore[attr-defined]
            *inherited,
            *(n for n in namespaces if n not in inherited),
        )
        return cls

    return mark


def implicit_namespaces(cls: type) -> tuple[str, ...]:
    return tuple(getattr(cls, "__implicit_streams__", ()))


@dataclass(frozen=True, slots=True)
class ObserverRef:
    """A reference to an observer object living with a client (or an activation) at
    ``address``. ``ref.method(*args)`` pushes a notification: nothing is awaited and nothing
    comes back, and one to an observer that is gone is dropped. Keep them in an
    ``ObserverSet`` to drop the ones not renewed in time."""

    address: str
    observer_id: str

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("_"):
            raise AttributeError(name)

        def push(*args: Any) -> None:
            # The runtime of the current turn carries it (a silo's caller: ``notify``).
            notify = getattr(current_invoker.get(), "notify", None)
            if notify is None:
                raise InvalidCallError(
                    f"observer {self.observer_id}: notify it from inside an actor's turn "
                    "(an actor pushes to the observers a client gave it)"
                )
            try:
                notice = encode([self.observer_id, name, list(args)])
            except SerializationError as exc:
                raise SerializationError(f"notification {name} to an observer: {exc}") from None
            notify(self.address, notice)

        return push


class Stream(Protocol):
    """A stream to publish to (``self.streams.get(ns, key)``, ``cluster.stream(ns, key)``)."""

    @property
    def id(self) -> StreamId: ...

    async def publish(self, data: Any, *, event_id: str | None = None) -> int | None:
        """Publish one event. Durable: returns once it is in the log, with its position
        (publishing the same ``event_id`` again appends nothing). Fast: returns at once, None."""
        ...

    async def publish_many(self, items: list[Any]) -> int | None:
        """Publish several events in order, atomically on a durable stream; the last position."""
        ...


class Streams(Protocol):
    """``self.streams``: publishing, explicit subscriptions and observers of this actor."""

    def get(self, namespace: str, key: ActorKey) -> Stream: ...

    async def subscribe(self, stream: StreamId) -> Subscription:
        """Subscribe this actor to ``stream`` (durable: kept until ``unsubscribe``); each
        subscription gets every event once more, from the next one published."""
        ...

    async def unsubscribe(self, subscription: Subscription) -> bool:
        """Drop a subscription of this actor; returns whether it existed."""
        ...

    async def subscriptions(self, stream: StreamId) -> list[Subscription]:
        """This actor's explicit subscriptions to ``stream``."""
        ...

    async def rewind(self, stream: StreamId, position: int, subscription: str = "implicit") -> None:
        """Consume ``stream`` again from just after ``position`` (durable streams)."""
        ...

    def observer(self, target: object) -> ObserverRef:
        """An ``ObserverRef`` to ``target``, an object of this activation (it lives as long
        as the activation)."""
        ...
