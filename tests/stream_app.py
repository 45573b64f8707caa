"""Stream consumers the tests run (importable, so Ray workers can load them too).

Namespaces: "orders" (durable, implicit consumers), "telemetry" (fast in the tests' local
clusters), "flaky" (durable; its consumer raises on a poison event until healed), "feed"
(durable, explicit subscriptions only), "poison" and "fastpoison" (durable and fast: a consumer
that always fails on a poison event).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from raygrain.actors import (
    Actor,
    ObserverRef,
    ObserverSet,
    StreamEvent,
    StreamId,
    Subscription,
    implicit_subscription,
)


@dataclass
class Tally:
    # [subscription, stream key, position, data] per event applied, in the order applied
    seen: list[list[Any]] = field(default_factory=list)
    applied: dict[str, int] = field(default_factory=dict)  # event id -> times applied
    healed: bool = False
    subscriptions: list[str] = field(default_factory=list)


class _Consumer(Actor[Tally]):
    async def on_stream_event(self, event: StreamEvent) -> None:
        self.state.seen.append([event.subscription, event.stream.key, event.position, event.data])
        self.state.applied[event.event_id] = self.state.applied.get(event.event_id, 0) + 1

    async def seen(self) -> list[list[Any]]:
        return self.state.seen

    async def applied(self) -> dict[str, int]:
        return self.state.applied

    async def leave(self) -> None:
        self.context.deactivate_on_idle()

    async def rewind_implicit(self, namespace: str, position: int) -> None:
        await self.streams.rewind(StreamId(namespace, self.context.key), position)


@implicit_subscription("orders")
class OrderConsumer(_Consumer, name="test.streams.OrderConsumer"):
    pass


@implicit_subscription("orders")
class OrderAuditor(_Consumer, name="test.streams.OrderAuditor"):
    pass


@implicit_subscription("telemetry")
class Gauge(_Consumer, name="test.streams.Gauge"):
    pass


@implicit_subscription("flaky")
class Flaky(_Consumer, name="test.streams.Flaky"):
    async def on_stream_event(self, event: StreamEvent) -> None:
        await super().on_stream_event(event)  # (rolled back when this raises)
        if event.data == "poison" and not self.state.healed:
            raise ValueError(f"cannot digest event {event.position}")

    async def heal(self) -> None:
        self.state.healed = True


# Every call of PoisonCounter.on_stream_event, by event data (kept outside the actor's state,
# which a failed turn rolls back).
CALLS: dict[str, int] = {}


@implicit_subscription("poison")
@implicit_subscription("fastpoison")
class PoisonCounter(_Consumer, name="test.streams.PoisonCounter"):
    """Counts its handler's calls; raises on "poison" always."""

    async def on_stream_event(self, event: StreamEvent) -> None:
        CALLS[event.data] = CALLS.get(event.data, 0) + 1
        await super().on_stream_event(event)
        if event.data == "poison":
            raise ValueError("cannot digest it")


class Subscriber(_Consumer, name="test.streams.Subscriber"):
    async def subscribe(self, namespace: str, key: str) -> str:
        subscription = await self.streams.subscribe(StreamId(namespace, key))
        self.state.subscriptions.append(subscription.id)
        return subscription.id

    async def unsubscribe(self, namespace: str, key: str, subscription_id: str) -> bool:
        stream = StreamId(namespace, key)
        mine = Subscription(subscription_id, stream, self.context.id)
        return await self.streams.unsubscribe(mine)

    async def subscription_ids(self, namespace: str, key: str) -> list[str]:
        return [s.id for s in await self.streams.subscriptions(StreamId(namespace, key))]

    async def rewind(self, namespace: str, key: str, position: int, subscription: str) -> None:
        await self.streams.rewind(StreamId(namespace, key), position, subscription)

    async def publish(self, namespace: str, key: str, data: Any) -> int | None:
        return await self.streams.get(namespace, key).publish(data)


class Announcer(Actor[None], name="test.streams.Announcer"):
    """Pushes what it is told to the observers that joined."""

    def __init__(self) -> None:
        self.listeners = ObserverSet(expiry=60)

    async def join(self, listener: ObserverRef) -> None:
        self.listeners.subscribe(listener)

    async def announce(self, text: str) -> int:
        return self.listeners.notify("heard", self.context.key, text)


STREAM_ACTORS: list[type[Actor[Any]]] = [
    OrderConsumer,
    OrderAuditor,
    Gauge,
    Flaky,
    PoisonCounter,
    Subscriber,
    Announcer,
]
