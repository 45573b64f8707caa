"""Streams on an in-process cluster, ported from Orleans' stream tests (StreamingTests,
SubscriptionMultiplicityTests, the rewind and faulty-consumer cases) plus fast streams,
back-pressure and bad input. Observers are in test_observers.py; crashes in
test_stream_crash.py; node death in tests/ray/test_streams_failover.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from raygrain import (
    ConfigurationError,
    InvalidStreamError,
    MemoryStorage,
    SerializationError,
    StorageError,
    StreamEvent,
    StreamId,
    StreamSettings,
    Subscription,
    implicit_subscription,
    read_only,
)
from raygrain.actors import Actor, ActorId, decode_error, encode
from raygrain.runtime import Cluster
from raygrain.runtime.kernel import Request, Response
from raygrain.runtime.streams import StreamService
from raygrain.storage import StateWrite
from tests import app, stream_app
from tests.helpers import activation_of, wait_until
from tests.stream_app import (
    Flaky,
    Gauge,
    OrderAuditor,
    OrderConsumer,
    PoisonCounter,
    Subscriber,
)

SETTINGS = StreamSettings(
    fast=frozenset({"telemetry", "fastpoison"}), retry_delay=0.0, sweep_period=0.2
)


@pytest.fixture
async def streams() -> AsyncIterator[Cluster]:
    async with Cluster.local(
        actors=app.ALL_ACTORS, silos=3, deactivation_timeout=0.5, streams=SETTINGS
    ) as running:
        yield running


async def _seen(cluster: Cluster, cls: Any, key: str, count: int) -> list[list[Any]]:
    ref = cluster.get(cls, key)

    async def enough() -> bool:
        return len(await ref.seen()) >= count

    await wait_until(enough, f"{cls.__name__} {key} to consume {count} events")
    return await ref.seen()  # type: ignore[no-any-return]


async def test_produced_equals_consumed_in_order_per_stream(streams: Cluster) -> None:
    keys = [f"s{i}" for i in range(5)]
    published: dict[str, list[int]] = {k: [] for k in keys}
    for n in range(40):
        for key in keys:
            position = await streams.streams.get("orders", key).publish(n)
            published[key].append(position)  # type: ignore[arg-type]
    batch = await streams.streams.get("orders", "s0").publish_many([100, 101, 102])
    assert batch == 43
    for key in keys:
        assert published[key] == list(range(1, 41))  # positions: the stream's versions
        expected = list(range(40)) + ([100, 101, 102] if key == "s0" else [])
        for cls in (OrderConsumer, OrderAuditor):  # two implicit consumer types: each once
            seen = await _seen(streams, cls, key, len(expected))
            assert [s[3] for s in seen] == expected
            assert [s[2] for s in seen] == list(range(1, len(expected) + 1))
            assert {s[0] for s in seen} == {"implicit"}
            applied = await streams.get(cls, key).applied()
            assert set(applied.values()) == {1}


async def test_two_explicit_subscriptions_deliver_twice_implicit_once(streams: Cluster) -> None:
    subscriber = streams.get(Subscriber, "twice")
    first = await subscriber.subscribe("orders", "multi")
    second = await subscriber.subscribe("orders", "multi")
    assert first != second
    assert sorted(await subscriber.subscription_ids("orders", "multi")) == sorted([first, second])
    for n in range(10):
        await streams.streams.get("orders", "multi").publish(n)
    seen = await _seen(streams, Subscriber, "twice", 20)
    assert sorted(s[0] for s in seen) == sorted([first] * 10 + [second] * 10)
    for sub in (first, second):
        assert [s[3] for s in seen if s[0] == sub] == list(range(10))
    implicit = await _seen(streams, OrderConsumer, "multi", 10)
    assert [s[3] for s in implicit] == list(range(10))
    # Unsubscribing one leaves one: the next events arrive once more each, not twice.
    assert await subscriber.unsubscribe("orders", "multi", first) is True
    assert await subscriber.unsubscribe("orders", "multi", first) is False
    for n in range(10, 15):
        await streams.streams.get("orders", "multi").publish(n)
    await _seen(streams, OrderConsumer, "multi", 15)  # delivered everywhere by now
    seen = await _seen(streams, Subscriber, "twice", 25)
    assert [s[3] for s in seen if s[0] == second] == list(range(15))
    assert [s[3] for s in seen if s[0] == first] == list(range(10))
    assert len(await streams.get(Subscriber, "twice").seen()) == 25


@dataclass
class _Got:
    events: list[Any] = field(default_factory=list)


_GATE: dict[str, asyncio.Event] = {}


class Quitter(Actor[_Got], name="test.streams.Quitter"):
    """Unsubscribes from a stream when it reads "stop" (in its handler), or when told."""

    async def on_stream_event(self, event: StreamEvent) -> None:
        self.state.events.append(event.data)
        if event.data == "stop":
            for subscription in await self.streams.subscriptions(event.stream):
                await self.streams.unsubscribe(subscription)

    async def subscribe(self, namespace: str) -> Subscription:
        return await self.streams.subscribe(StreamId(namespace, "q"))

    async def unsubscribe(self, subscription: Subscription) -> bool:
        return await self.streams.unsubscribe(subscription)

    async def wait_at_gate(self) -> None:
        await _GATE[str(self.context.key)].wait()

    @read_only
    async def seen(self) -> list[Any]:
        return self.state.events


@pytest.mark.parametrize("namespace", ["orders", "telemetry"], ids=["durable", "fast"])
async def test_no_event_is_delivered_to_a_subscription_after_unsubscribe_returned(
    namespace: str,
) -> None:
    # Orleans' StreamLifecycleTests: once UnsubscribeAsync returns, that handle gets nothing
    # more. Events already on the consumer's silo (the rest of a batch under way, or published
    # before the hub forgot the subscription) were still delivered.
    async with Cluster.local(actors=[Quitter], silos=1, streams=SETTINGS) as cluster:
        stream = cluster.streams.get(namespace, "q")
        # Unsubscribing in the handler: the rest of its batch is not delivered.
        handler = cluster.get(Quitter, "q")
        await handler.subscribe(namespace)
        await stream.publish_many(["a", "stop", "b", "c"])
        await wait_until(lambda: _has(handler, "stop"), "the handler to read stop")
        # Unsubscribing from a method while events wait for the consumer: they are dropped.
        told = cluster.get(Quitter, "told")
        subscription = await told.subscribe(namespace)
        _GATE["told"] = asyncio.Event()
        busy = asyncio.ensure_future(told.wait_at_gate())
        unsubscribing = asyncio.ensure_future(told.unsubscribe(subscription))
        await wait_until(lambda: _queued(cluster, told) == 1, "the unsubscribe call to queue")
        await stream.publish_many(["x", "y"])  # offered behind the unsubscribe call
        await wait_until(lambda: _queued(cluster, told) == 2, "the events' turn to queue")
        _GATE["told"].set()
        await busy
        assert await unsubscribing is True
        await stream.publish("z")  # (after the hub forgot it: never sent)
        assert await handler.seen() == ["a", "stop"]
        assert await told.seen() == []


async def _has(ref: Any, data: str) -> bool:
    return data in await ref.seen()


def _queued(cluster: Cluster, ref: Any) -> int:
    """Calls and delivery turns waiting behind the running turn."""
    return len(activation_of(cluster, ref).mailbox or ())


async def test_a_subscription_starts_at_the_next_event(streams: Cluster) -> None:
    for n in range(3):
        await streams.streams.get("feed", "late").publish(f"before {n}")
    subscriber = streams.get(Subscriber, "late")
    sub = await subscriber.subscribe("feed", "late")
    await streams.streams.get("feed", "late").publish("after")
    seen = await _seen(streams, Subscriber, "late", 1)
    assert seen == [[sub, "late", 4, "after"]]


async def test_a_consumer_resumes_after_deactivation_from_its_position(streams: Cluster) -> None:
    stream = streams.streams.get("orders", "resume")
    for n in range(10):
        await stream.publish(n)
    await _seen(streams, OrderConsumer, "resume", 10)
    consumer = streams.get(OrderConsumer, "resume")
    await consumer.leave()

    def inactive() -> bool:
        return all(consumer.actor_id not in s.activations for s in streams.silos)

    await wait_until(inactive, "the consumer to deactivate")
    for n in range(10, 20):
        await stream.publish(n)
    seen = await _seen(streams, OrderConsumer, "resume", 20)
    assert [s[3] for s in seen] == list(range(20))  # none twice, none missed
    assert set((await consumer.applied()).values()) == {1}


async def test_a_consumer_rewinds_and_consumes_again(streams: Cluster) -> None:
    stream = streams.streams.get("orders", "again")
    for n in range(5):
        await stream.publish(n)
    consumer = streams.get(OrderConsumer, "again")
    await _seen(streams, OrderConsumer, "again", 5)
    await consumer.rewind_implicit("orders", 2)
    seen = await _seen(streams, OrderConsumer, "again", 8)
    assert [s[2] for s in seen] == [1, 2, 3, 4, 5, 3, 4, 5]
    with pytest.raises(InvalidStreamError, match="int >= 0"):
        await consumer.rewind_implicit("orders", -1)
    with pytest.raises(InvalidStreamError, match="only durable ones rewind"):
        await streams.get(Gauge, "again").rewind_implicit("telemetry", 0)
    # Forward past the head: the events published up to there would never be delivered.
    with pytest.raises(InvalidStreamError, match="has no event at position 6 yet"):
        await consumer.rewind_implicit("orders", 6)
    await consumer.rewind_implicit("orders", 5)  # the head itself: nothing to consume again
    await stream.publish(5)
    seen = await _seen(streams, OrderConsumer, "again", 9)
    assert [s[2] for s in seen] == [1, 2, 3, 4, 5, 3, 4, 5, 6]


async def test_a_raising_consumer_is_retried_then_dead_lettered_then_replayed(
    streams: Cluster,
) -> None:
    stream = streams.streams.get("flaky", "f1")
    for data in ["a", "poison", "b"]:
        await stream.publish(data)
    flaky = streams.get(Flaky, "f1")
    seen = await _seen(streams, Flaky, "f1", 2)
    # The poison event's effect was rolled back each time; the events after it go on.
    assert [s[3] for s in seen] == ["a", "b"]
    letters = await streams.streams.dead_letters("flaky")
    assert len(letters) == 1
    letter = letters[0]
    assert (letter.stream, letter.position, letter.data) == (StreamId("flaky", "f1"), 2, "poison")
    assert letter.consumer == flaky.actor_id and letter.attempts == SETTINGS.max_attempts
    assert "cannot digest event 2" in letter.error and not letter.replayed
    with pytest.raises(ValueError, match="cannot digest"):
        await streams.streams.replay(letter)  # still sick: the error comes back
    await flaky.heal()
    await streams.streams.replay(letter)
    seen = await flaky.seen()
    assert [s[3] for s in seen] == ["a", "b", "poison"]
    assert [letter.replayed for letter in await streams.streams.dead_letters()] == [True]
    assert await streams.streams.dead_letters("orders") == []


@pytest.mark.parametrize("namespace", ["poison", "fastpoison"])
async def test_an_event_failing_in_a_batch_is_tried_max_attempts_times_in_all(
    streams: Cluster, namespace: str
) -> None:
    # "poison" fails third in a batch: the two before it are delivered again first (their
    # state changes rolled back with the turn), then it is tried alone. Its failure in the
    # batch counts: max_attempts calls in all, as its dead letter says (a fast stream's letter
    # said 0 attempts, written after the cursor moved on; both tried it once more than that).
    stream_app.CALLS.clear()
    key = f"batch-{namespace}"
    await streams.streams.get(namespace, key).publish_many(["p1", "p2", "poison", "p3"])
    counter = streams.get(PoisonCounter, key)
    seen = await _seen(streams, PoisonCounter, key, 3)
    assert [s[3] for s in seen] == ["p1", "p2", "p3"]  # each applied once

    async def letters_of_counter() -> list[Any]:
        return [
            letter
            for letter in await streams.streams.dead_letters(namespace)
            if letter.consumer == counter.actor_id
        ]

    async def lettered() -> bool:  # (a fast stream's letter is written in the background)
        return bool(await letters_of_counter())

    await wait_until(lettered, "the dead letter")
    letters = await letters_of_counter()
    assert [(letter.data, letter.attempts) for letter in letters] == [
        ("poison", SETTINGS.max_attempts)
    ]
    assert stream_app.CALLS["poison"] == SETTINGS.max_attempts


async def test_fast_streams_keep_each_producers_order(streams: Cluster) -> None:
    for n in range(200):
        assert await streams.streams.get("telemetry", "t").publish(n) is None
    seen = await _seen(streams, Gauge, "t", 200)
    assert [s[3] for s in seen] == list(range(200))
    assert {s[2] for s in seen} == {0}  # fast events have no position


async def test_back_pressure_bounds_what_a_consumer_holds() -> None:
    settings = StreamSettings(
        fast=frozenset({"telemetry"}), max_in_flight=4, max_batch=2, sweep_period=0.2
    )
    async with Cluster.local(actors=app.ALL_ACTORS, silos=1, streams=settings) as cluster:
        # Durable: whatever does not fit stays in the log and is read back; nothing is lost.
        await cluster.streams.get("orders", "bp").publish_many(list(range(100)))
        seen = await _seen(cluster, OrderConsumer, "bp", 100)
        assert [s[3] for s in seen] == list(range(100))
        # Fast: one publish of 100 events reaches a consumer that holds 4: the rest is dropped.
        await cluster.streams.get("telemetry", "bp").publish_many(list(range(100)))
        service = cluster.silos[0].extension(StreamService)
        assert service is not None
        await wait_until(lambda: service.fast_dropped == 96, "the fast overflow to be dropped")
        seen = await _seen(cluster, Gauge, "bp", 4)
        assert [s[3] for s in seen] == [0, 1, 2, 3]


async def test_bad_stream_input_is_refused_clearly(streams: Cluster) -> None:
    with pytest.raises(InvalidStreamError, match="non-empty string"):
        StreamId("", "k")
    with pytest.raises(InvalidStreamError, match="reserved"):
        StreamId("$dead-letters", "k")
    with pytest.raises(InvalidStreamError, match="str or int"):
        StreamId("orders", 1.5)  # type: ignore[arg-type]
    with pytest.raises(SerializationError, match="event for stream orders/'x'"):
        await streams.streams.get("orders", "x").publish(object())
    with pytest.raises(InvalidStreamError, match="non-empty list"):
        await streams.streams.get("orders", "x").publish_many([])
    with pytest.raises(ConfigurationError, match="max_attempts"):
        StreamSettings(max_attempts=0)
    with pytest.raises(ConfigurationError, match="set of namespace names"):
        StreamSettings(fast="telemetry")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="streams must be a StreamSettings"):
        Cluster.local(actors=[], streams={"fast": ["x"]})  # type: ignore[arg-type]
    with pytest.raises(InvalidStreamError, match="at least one namespace"):
        implicit_subscription()


async def test_a_stateless_worker_cannot_consume() -> None:
    @implicit_subscription("orders")
    class Pool(Actor[None], name="test.streams.Pool", stateless_worker=True):
        async def ping(self) -> None:
            pass

    with pytest.raises(InvalidStreamError, match="stateless worker cannot consume"):
        Cluster.local(actors=[Pool])


async def test_a_consumer_without_on_stream_event_is_refused() -> None:
    """Every event to it would fail its attempts and end in the dead letters: refused when the
    cluster starts (implicit) or when it subscribes (explicit)."""

    @implicit_subscription("orders")
    class Deaf(Actor[None], name="test.streams.Deaf"):
        async def ping(self) -> None:
            pass

    with pytest.raises(InvalidStreamError, match="Deaf has no 'async def on_stream_event"):
        Cluster.local(actors=[Deaf])

    class Joiner(Actor[None], name="test.streams.Joiner"):
        async def join(self, key: str) -> None:
            await self.streams.subscribe(StreamId("rooms", key))

    async with Cluster.local(actors=[Joiner], silos=1) as cluster:
        with pytest.raises(InvalidStreamError, match="cannot consume stream rooms/'lobby'"):
            await cluster.get(Joiner, "j").join("lobby")


class FlakyStore(MemoryStorage):
    """Memory storage whose atomic writes fail while ``failures`` is above zero."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0

    async def write_many(self, writes: Sequence[StateWrite]) -> list[str]:
        if self.failures > 0:
            self.failures -= 1
            raise StorageError("the disk is having a moment")
        return await super().write_many(writes)


async def test_a_storage_failure_is_retried_and_never_dead_letters_an_event() -> None:
    store = FlakyStore()
    async with Cluster.local(
        actors=app.ALL_ACTORS, silos=1, storage=store, streams=SETTINGS
    ) as cluster:
        stream = cluster.streams.get("orders", "disk")
        await stream.publish("first")
        await _seen(cluster, OrderConsumer, "disk", 1)
        await _seen(cluster, OrderAuditor, "disk", 1)
        store.failures = 3 * SETTINGS.max_attempts  # the consumers' next commits fail
        await stream.publish("kept")
        for cls in (OrderConsumer, OrderAuditor):
            seen = await _seen(cluster, cls, "disk", 2)
            assert [s[3] for s in seen] == ["first", "kept"]
        assert store.failures == 0  # the failures happened, and were not the event's fault
        assert await cluster.streams.dead_letters() == []


async def test_durable_streams_on_postgresql(postgres_url: str) -> None:
    async with Cluster.local(
        actors=app.ALL_ACTORS, silos=2, storage=postgres_url, streams=SETTINGS
    ) as cluster:
        subscriber = cluster.get(Subscriber, "pg")
        sub = await subscriber.subscribe("orders", "pg")
        await cluster.streams.get("orders", "pg").publish_many(list(range(20)))
        for data in ["a", "poison", "b"]:
            await cluster.streams.get("flaky", "pg").publish(data)
        implicit = await _seen(cluster, OrderConsumer, "pg", 20)
        assert [s[3] for s in implicit] == list(range(20))
        explicit = await _seen(cluster, Subscriber, "pg", 20)
        assert [(s[0], s[3]) for s in explicit] == [(sub, n) for n in range(20)]
        await _seen(cluster, Flaky, "pg", 2)
        letters = await cluster.streams.dead_letters("flaky")
        assert [(letter.data, letter.position) for letter in letters] == [("poison", 2)]


async def test_explicit_subscriptions_and_positions_survive_a_full_restart(
    tmp_path: Path,
) -> None:
    store = f"sqlite:///{tmp_path / 'streams.db'}"
    async with Cluster.local(actors=app.ALL_ACTORS, storage=store, streams=SETTINGS) as first:
        sub = await first.get(Subscriber, "kept").subscribe("feed", "restart")
        await first.streams.get("feed", "restart").publish_many(["a", "b"])
        await _seen(first, Subscriber, "kept", 2)
    async with Cluster.local(actors=app.ALL_ACTORS, storage=store, streams=SETTINGS) as second:
        await second.streams.get("feed", "restart").publish("c")
        seen = await _seen(second, Subscriber, "kept", 3)
        assert [(s[0], s[2], s[3]) for s in seen] == [(sub, 1, "a"), (sub, 2, "b"), (sub, 3, "c")]


async def test_forged_stream_messages_get_errors_and_the_silo_serves_on(streams: Cluster) -> None:
    hub = ActorId("$streams.hub", "x")
    forged = [
        (hub, "__stream_publish__", ["", "k", []], InvalidStreamError),  # a bad namespace
        (hub, "__stream_subscribe__", ["orders"], IndexError),  # too few fields
        (hub, "__stream_replay__", [encode(1)], InvalidStreamError),  # not a dead letter
        (hub, "__stream_sync__", 5, TypeError),  # not a list at all
    ]
    silo = streams.silos[0]
    answers: list[Response] = []
    transport = silo.transport
    original = transport.reply
    transport.reply = lambda _, response: answers.append(response)  # type: ignore[method-assign]
    try:
        for call_id, (target, method, args, _) in enumerate(forged, 1):
            # As a transport hands the silo a message off the wire: it must not raise.
            silo.deliver_request(Request(call_id, target, method, encode(args), "peer", 5.0))
    finally:
        transport.reply = original  # type: ignore[method-assign]
    by_call = {a.call_id: a for a in answers}
    for call_id, (_, method, _, error) in enumerate(forged, 1):
        assert not by_call[call_id].ok, method
        assert isinstance(decode_error(by_call[call_id].payload), error), method
    consumer = ActorId("test.NoSuchType", "k")
    await streams._caller.invoke_system(  # an unknown consumer is skipped (and logged)
        consumer,
        "__stream_deliver__",
        ["orders", "k", 1, [], [["test.NoSuchType", "k", "implicit", 0]], 0],
        5,
    )
    assert await streams.streams.get("orders", "after").publish("fine") == 1
    assert [s[3] for s in await _seen(streams, OrderConsumer, "after", 1)] == ["fine"]


async def test_a_silo_keeps_a_bounded_number_of_hubs(
    streams: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    from raygrain.runtime.streams import _hub

    monkeypatch.setattr(_hub, "MAX_HUBS", 2)
    for n in range(6):
        await streams.streams.get("orders", f"bounded-{n}").publish(n)
    for n in range(6):
        assert [s[3] for s in await _seen(streams, OrderConsumer, f"bounded-{n}", 1)] == [n]
    services = [silo.extension(StreamService) for silo in streams.silos]
    assert all(s is not None and len(s.hubs._hubs) <= 2 for s in services)
