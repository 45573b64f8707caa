"""The stream API: ``self.streams`` inside an actor, ``cluster.streams`` on a client.

Both publish through a ``StreamRef`` (a system message to the stream's hub; see ``_hub``); an
actor also subscribes, unsubscribes, rewinds and makes observers of its own objects; a client
lists and replays dead letters and makes observers of its objects.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

from raygrain.actors import (
    Actor,
    ActorId,
    ActorKey,
    DeadLetter,
    InvalidStreamError,
    MessageTooLargeError,
    ObserverRef,
    SerializationError,
    StreamId,
    Subscription,
    encode,
    implicit_namespaces,
)
from raygrain.runtime.kernel import Activation, Caller, get_logger
from raygrain.runtime.streams._consumer import Consumer
from raygrain.runtime.streams._consumer import StreamService as ConsumerService
from raygrain.runtime.streams._hub import hub_id
from raygrain.runtime.streams._log import require_log
from raygrain.runtime.streams._observers import ObserverRegistry
from raygrain.runtime.streams._settings import StreamSettings

__all__ = ["ActorStreams", "ClusterStreams", "StreamRef"]


class StreamService(ConsumerService, Protocol):
    """What the stream API uses of the silo's stream service (``_extension.StreamService``):
    what its consumers use, and more."""

    @property
    def observers(self) -> ObserverRegistry: ...

    def ask(self, target: ActorId, method: str, args: list[Any]) -> Awaitable[Any]: ...


class StreamRef:
    """A stream to publish to. ``settings`` None: the mode is not known here (a client
    connected to a deployment), so every publish waits for the hub's answer."""

    __slots__ = ("_caller", "_settings", "id")

    def __init__(self, stream: StreamId, caller: Caller, settings: StreamSettings | None) -> None:
        self.id = stream
        self._caller = caller
        self._settings = settings

    def __repr__(self) -> str:
        return f"StreamRef({self.id})"

    async def publish(self, data: Any, *, event_id: str | None = None) -> int | None:
        if event_id is not None and (not isinstance(event_id, str) or not event_id):
            raise InvalidStreamError(
                f"stream {self.id}: event_id must be a non-empty string, got {event_id!r}"
            )
        return await self._publish([[self._encode(data), event_id]])

    async def publish_many(self, items: list[Any]) -> int | None:
        if not isinstance(items, list) or not items:
            raise InvalidStreamError(f"stream {self.id}: publish_many takes a non-empty list")
        return await self._publish([[self._encode(item), None] for item in items])

    def _encode(self, data: Any) -> bytes:
        try:
            encoded = encode(data)
        except SerializationError as exc:
            raise SerializationError(f"event for stream {self.id}: {exc}") from None
        limit = self._caller.max_message_bytes
        if len(encoded) > limit:
            raise MessageTooLargeError(
                f"event for stream {self.id} encodes to {len(encoded)} bytes, over the "
                f"{limit}-byte message limit (max_message_bytes)"
            )
        return encoded

    async def _publish(self, items: list[list[Any]]) -> int | None:
        stream = self.id
        args = [stream.namespace, stream.key, items]
        timeout = self._caller.default_timeout
        if self._settings is not None and self._settings.is_fast(stream.namespace):
            # Fire and forget: in order per producer (one hub, FIFO links), never waited for.
            future = self._caller.send_system(hub_id(stream), "__stream_publish__", args, timeout)
            future.add_done_callback(_log_failure)
            return None
        result = await self._caller.invoke_system(
            hub_id(stream), "__stream_publish__", args, timeout
        )
        return int(result) if result is not None else None


def _log_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        get_logger().info("fast_publish_failed", error=repr(future.exception()))


class ActorStreams:
    """``self.streams`` of one activation (``raygrain.actors.Streams``)."""

    __slots__ = ("activation", "service")

    def __init__(self, activation: Activation, service: StreamService) -> None:
        self.activation = activation
        self.service = service

    def get(self, namespace: str, key: ActorKey) -> StreamRef:
        return StreamRef(
            StreamId(namespace, key), self.activation.silo.caller, self.service.settings
        )

    def _check_consumer(self, stream: Any) -> StreamId:
        if not isinstance(stream, StreamId):
            raise InvalidStreamError(f"expected a StreamId, got {type(stream).__name__}")
        if self.activation.options.stateless_worker:
            raise InvalidStreamError(
                f"{self.activation.actor_id}: a stateless worker cannot subscribe to streams"
            )
        check_consumes(
            type(self.activation.instance), str(self.activation.actor_id), f"stream {stream}"
        )
        return stream

    async def subscribe(self, stream: StreamId) -> Subscription:
        stream = self._check_consumer(stream)
        me = self.activation.actor_id
        args = [stream.namespace, stream.key, me.type_name, me.key]
        sub_id, _ = await self.service.ask(hub_id(stream), "__stream_subscribe__", args)
        return Subscription(sub_id, stream, me)

    async def unsubscribe(self, subscription: Subscription) -> bool:
        if not isinstance(subscription, Subscription):
            raise InvalidStreamError(f"expected a Subscription, got {type(subscription).__name__}")
        me = self.activation.actor_id
        if subscription.consumer != me:
            raise InvalidStreamError(
                f"{me}: subscription {subscription.id} belongs to {subscription.consumer}"
            )
        stream = subscription.stream
        args = [stream.namespace, stream.key, subscription.id, me.type_name, me.key]
        dropped = bool(await self.service.ask(hub_id(stream), "__stream_unsubscribe__", args))
        # Events of it already here (held, in a batch under way, or on their way from the hub)
        # are not delivered any more: after unsubscribe returns, the subscription is gone.
        Consumer.of(self.activation, self.service).unsubscribed(stream, subscription.id)
        return dropped

    async def subscriptions(self, stream: StreamId) -> list[Subscription]:
        stream = self._check_consumer(stream)
        me = self.activation.actor_id
        found = await self.service.ask(
            hub_id(stream), "__stream_subscriptions__", [stream.namespace, stream.key]
        )
        return [Subscription(s[0], stream, me) for s in found if ActorId(s[1], s[2]) == me]

    async def rewind(self, stream: StreamId, position: int, subscription: str = "implicit") -> None:
        stream = self._check_consumer(stream)
        me = self.activation.actor_id
        if isinstance(position, bool) or not isinstance(position, int) or position < 0:
            raise InvalidStreamError(f"{me}: rewind position must be an int >= 0, got {position!r}")
        if self.service.settings.is_fast(stream.namespace):
            raise InvalidStreamError(f"{me}: stream {stream} is fast; only durable ones rewind")
        if subscription == "implicit":
            if (
                stream.namespace not in implicit_namespaces(self.activation.cls)
                or stream.key != me.key
            ):
                raise InvalidStreamError(f"{me} is no implicit consumer of stream {stream}")
        elif subscription not in {s.id for s in await self.subscriptions(stream)}:
            raise InvalidStreamError(f"{me} has no subscription {subscription!r} to {stream}")
        if position:
            # Forward past the head, the events up to the position (published later) would
            # never be delivered: a rewind goes back to where the stream has been.
            log = require_log(self.service.storage, stream)
            if not await log.read_stream(stream.log_name(), position, 1):
                raise InvalidStreamError(
                    f"{me}: stream {stream} has no event at position {position} yet; a rewind "
                    "goes back to a position the stream has reached"
                )
        await Consumer.of(self.activation, self.service).rewind(stream, subscription, position)

    def observer(self, target: object) -> ObserverRef:
        ref = self.service.observers.add(target)
        Consumer.of(self.activation, self.service).observers.append(ref.observer_id)
        return ref


class ClusterStreams:
    """``cluster.streams``: publish from a client, dead letters, the client's observers."""

    def __init__(self, caller: Caller, settings: StreamSettings | None) -> None:
        self._caller = caller
        self._settings = settings
        self._observers = ObserverRegistry.of(caller)

    def get(self, namespace: str, key: ActorKey) -> StreamRef:
        return StreamRef(StreamId(namespace, key), self._caller, self._settings)

    async def dead_letters(self, namespace: str | None = None) -> list[DeadLetter]:
        """The dead letters (of ``namespace``), oldest first; ``replayed`` marks the ones
        replayed since."""
        if namespace is not None:
            StreamId(namespace, "")
        target = ActorId("$streams.dead-letters", namespace or "")
        timeout = self._caller.default_timeout
        found = await self._caller.invoke_system(
            target, "__stream_dead_letters__", [namespace], timeout
        )
        return list(found)

    async def replay(self, letter: DeadLetter) -> None:
        """Deliver ``letter``'s event to its consumer once more (``StreamEvent.replay``); its
        error is raised here if the consumer raises again."""
        if not isinstance(letter, DeadLetter):
            raise InvalidStreamError(f"expected a DeadLetter, got {type(letter).__name__}")
        timeout = self._caller.default_timeout
        await self._caller.invoke_system(
            letter.consumer, "__stream_replay__", [encode(letter)], timeout
        )

    def observer(self, target: object) -> ObserverRef:
        """An ``ObserverRef`` to ``target`` (an object with methods), to pass to actors: they
        push notifications to it. Kept until ``delete_observer`` or the client closes."""
        return self._observers.add(target)

    def delete_observer(self, observer: ObserverRef) -> bool:
        return self._observers.remove(observer)


def check_consumes(cls: type, who: str, what: str) -> None:
    """A consumer must have its own ``on_stream_event``: every event to one without it would
    fail its attempts and end in the dead letters, so it is refused when it subscribes (and,
    for an implicit subscription, when the cluster starts)."""
    if getattr(cls, "on_stream_event", Actor.on_stream_event) is Actor.on_stream_event:
        raise InvalidStreamError(
            f"{who} cannot consume {what}: its class {cls.__qualname__} has no "
            "'async def on_stream_event(self, event)' of its own"
        )
