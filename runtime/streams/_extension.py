"""Streams as a silo capability: how they plug into the kernel's extensions.

- ``attach``: the system messages of the hub (publish, subscribe, unsubscribe, list, sync), of
  the consumers (deliver, catch up, replay) and of the dead letters (list); ``self.streams``;
  the implicit subscriptions of the registered classes; observers of the silo's endpoint.
- ``start`` / ``stop``: the sweeper (see ``_sweeper``).
- ``view_changed``: the hubs' caches go (another silo may own a stream now).
- ``deactivating``: an activation's cursors stop and its observers go; durable work it still
  held is re-routed to the actor's next activation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from raygrain.actors import (
    ActorId,
    DeactivationReason,
    DeadLetter,
    InvalidStreamError,
    RaygrainError,
    SiloUnavailableError,
    StreamEvent,
    StreamId,
    decode,
    encode,
    implicit_namespaces,
)
from raygrain.runtime.kernel import (
    DROPPED,
    Activation,
    ActivationState,
    Extension,
    MembershipView,
    Request,
    Silo,
    TurnOutcome,
    get_logger,
    id_from_wire,
    run_as_turn,
)
from raygrain.runtime.streams._api import ActorStreams, check_consumes
from raygrain.runtime.streams._consumer import EXTRAS_KEY, Consumer, Cursor
from raygrain.runtime.streams._dead_letters import DeadLetters
from raygrain.runtime.streams._hub import Hubs, hub_id
from raygrain.runtime.streams._observers import ObserverRegistry
from raygrain.runtime.streams._settings import StreamSettings
from raygrain.runtime.streams._sweeper import Sweeper
from raygrain.storage import StorageProvider

__all__ = ["StreamService"]

_LIVE = (ActivationState.ACTIVATING, ActivationState.VALID)
_MAX_HOPS = 3


class StreamService(Extension):
    """Streams on one silo: the hubs it owns, its consumers' cursors, its sweeper."""

    def __init__(self) -> None:
        self.settings = StreamSettings()
        self.silo: Silo
        self.storage: StorageProvider
        self.hubs = Hubs(self)
        self.sweeper = Sweeper(self)
        self.dead_letters = DeadLetters(self)
        self.observers: ObserverRegistry
        self.implicit: dict[str, tuple[str, ...]] = {}  # namespace -> consuming type names
        self.fast_dropped = 0  # fast events dropped by back-pressure
        self._task: asyncio.Task[None] | None = None

    def attach(self, silo: Silo) -> None:
        self.silo = silo
        self.storage = silo.storage
        self.settings = silo.options.setting(StreamSettings, StreamSettings())
        self.observers = ObserverRegistry.of(silo.caller)
        implicit: dict[str, list[str]] = {}
        for name in silo.registry.names():
            cls = silo.registry.resolve(name)
            for namespace in implicit_namespaces(cls):
                if cls.__actor_options__.stateless_worker:
                    raise InvalidStreamError(
                        f"{name}: a stateless worker cannot consume streams (it has many "
                        "activations and no state to keep a position in)"
                    )
                check_consumes(cls, name, f"the streams of namespace {namespace!r} (implicitly)")
                implicit.setdefault(namespace, []).append(name)
        self.implicit = {n: tuple(names) for n, names in implicit.items()}
        silo.provide_service("streams", lambda a: ActorStreams(a, self))
        handlers: dict[str, Callable[[Request, list[Any]], None]] = {
            "__stream_publish__": self._on_publish,
            "__stream_subscribe__": self._on_subscribe,
            "__stream_unsubscribe__": self._on_unsubscribe,
            "__stream_subscriptions__": self._on_subscriptions,
            "__stream_sync__": self._on_sync,
            "__stream_deliver__": self._on_deliver,
            "__stream_catch_up__": self._on_catch_up,
            "__stream_replay__": self._on_replay,
            "__stream_dead_letters__": self._on_dead_letters,
        }
        for name, handler in handlers.items():
            silo.register_system_method(name, self._guarded(handler))

    def start(self, silo: Silo) -> None:
        self._task = silo.spawn(self.sweeper.run())

    async def stop(self, silo: Silo) -> None:
        if self._task is not None:
            self._task.cancel()

    def view_changed(self, silo: Silo, view: MembershipView) -> None:
        self.hubs.clear()

    def deactivating(self, activation: Activation, reason: DeactivationReason) -> None:
        consumer = activation.extras.get(EXTRAS_KEY) if activation.extras else None
        if consumer is not None:
            for observer_id in consumer.observers:
                self.observers.remove(observer_id)
            consumer.dropped()

    def stats(self, silo: Silo) -> dict[str, Any]:
        return {"stream_fast_dropped": self.fast_dropped, "stream_sweeps": self.sweeper.sweeps}

    # -- sending ---------------------------------------------------------------------------

    def send(self, target: ActorId, method: str, args: list[Any]) -> None:
        """A system message to ``target``'s silo, fire and forget (a failure is logged; the
        sweeper finishes what durable delivery loses)."""
        timeout = self.silo.options.calls.default_timeout
        try:
            future = self.silo.caller.send_system(target, method, args, timeout)
        except RaygrainError as exc:
            get_logger().info("stream_send_failed", target=str(target), error=repr(exc))
        else:
            future.add_done_callback(_log_failure)

    def ask(self, target: ActorId, method: str, args: list[Any]) -> Awaitable[Any]:
        """A system message to ``target``'s silo, and its answer."""
        timeout = self.silo.options.calls.default_timeout
        return self.silo.caller.invoke_system(target, method, args, timeout)

    async def sync(self, stream: StreamId, version: int) -> bool:
        return bool(await self.ask(hub_id(stream), "__stream_sync__", [*_wire(stream), version]))

    def redeliver(self, consumer: ActorId, cursor: Cursor) -> None:
        """A consumer's activation went with durable work: wake its next activation."""
        if self.silo.closed:
            return  # the sweeper of whoever owns it next finishes the work
        args = [*_wire(cursor.stream), cursor.head, [], [_consumer_wire(consumer, cursor)], 0]
        loop = asyncio.get_running_loop()
        loop.call_later(self.settings.retry_delay, self.send, consumer, "__stream_deliver__", args)

    def spawn_dead_letter(
        self, consumer: ActorId, cursor: Cursor, held: Any, attempts: int, error: str
    ) -> None:
        self.silo.spawn(self.dead_letters.add(consumer, cursor, held, attempts, error))

    # -- the hub's messages ----------------------------------------------------------------

    def _guarded(
        self, handler: Callable[[Request, list[Any]], None]
    ) -> Callable[[Request, list[Any]], None]:
        """A system message that is malformed (a forged one, a peer of another version) is
        answered with its error; it never reaches the silo's own loop."""

        def guarded(request: Request, args: list[Any]) -> None:
            try:
                handler(request, args)
            except Exception as exc:
                get_logger().warning(
                    "stream_message_refused", method=request.method, error=repr(exc)
                )
                self.silo.reply_error(request, exc, f"{request.method} on {self.silo.name}")

        return guarded

    def _serve(self, request: Request, work: Coroutine[Any, Any, Any], hub: bool = True) -> None:
        if hub and not self.silo.owns(request):
            work.close()
            return  # passed on to the owner
        self.silo.spawn(self._answer(request, work))

    async def _answer(self, request: Request, work: Coroutine[Any, Any, Any]) -> None:
        try:
            result = await work
        except Exception as exc:
            self.silo.reply_error(request, exc, f"{request.method} on {self.silo.name}")
            return
        self.silo.reply(request, True, b"" if result is None else encode(result))

    def _on_publish(self, request: Request, args: list[Any]) -> None:
        self._serve(request, self.hubs.publish(_stream(args), args[2]))

    def _on_subscribe(self, request: Request, args: list[Any]) -> None:
        self._serve(request, self.hubs.subscribe(_stream(args), ActorId(args[2], args[3])))

    def _on_unsubscribe(self, request: Request, args: list[Any]) -> None:
        consumer = ActorId(args[3], args[4])
        self._serve(request, self.hubs.unsubscribe(_stream(args), args[2], consumer))

    def _on_subscriptions(self, request: Request, args: list[Any]) -> None:
        self._serve(request, self.hubs.subscriptions(_stream(args)))

    def _on_sync(self, request: Request, args: list[Any]) -> None:
        self._serve(request, self.hubs.sync(_stream(args), args[2]))

    def _on_dead_letters(self, request: Request, args: list[Any]) -> None:
        self._serve(request, self._dead_letter_list(args[0]), hub=False)

    async def _dead_letter_list(self, namespace: str | None) -> list[DeadLetter]:
        return await self.dead_letters.list(namespace)

    # -- the consumers' messages -----------------------------------------------------------

    def _on_deliver(self, request: Request, args: list[Any]) -> None:
        self.silo.reply(request, True, b"")
        stream = _stream(args)
        events = [(e[0], e[1], e[2]) for e in args[3]]
        self.deliver(stream, args[2], events, args[4], args[5])

    def deliver(
        self,
        stream: StreamId,
        head: int,
        events: list[tuple[int, bytes, str]],
        consumers: list[list[Any]],
        hops: int,
        placed: bool = False,
    ) -> None:
        """Offer events to consumers the ring places here (others are passed on; ``placed``:
        this silo's own ring placed them here just now)."""
        for wire in consumers:
            consumer = id_from_wire(wire[0], wire[1])
            if not placed and hops < _MAX_HOPS and not self.silo.hosts(consumer):
                args = [*_wire(stream), head, [list(e) for e in events], [wire], hops + 1]
                self.send(consumer, "__stream_deliver__", args)
                continue
            try:
                cursor = self._cursor(consumer, stream, wire[2], wire[3])
            except RaygrainError:
                continue  # (logged) e.g. a subscription of a type this cluster no longer has
            if cursor is None:
                args = [*_wire(stream), head, [], [wire], hops]
                self._later(consumer, "__stream_deliver__", args)
            else:
                cursor.offer(head, events)

    def _on_catch_up(self, request: Request, args: list[Any]) -> None:
        stream = _stream(args)
        consumer = request.target
        if not self.silo.owns(request):
            return
        try:
            cursor = self._cursor(consumer, stream, args[2], args[3])
        except RaygrainError as exc:
            self.silo.reply_error(request, exc, f"catching up {consumer} on {stream}")
            return
        if cursor is None:
            error = SiloUnavailableError(f"{consumer} is deactivating; catch up again later")
            self.silo.reply_error(request, error, f"catching up {consumer} on {stream}")
            return

        def caught_up(error: Exception | None) -> None:
            if error is None:
                self.silo.reply(request, True, b"")
            else:
                self.silo.reply_error(request, error, f"catching up {consumer} on {stream}")

        cursor.wait_for(args[4], caught_up)

    def _cursor(self, consumer: ActorId, stream: StreamId, sub: str, start: int) -> Cursor | None:
        """The cursor of ``consumer``'s activation here (activating it); None while it is
        going away (the caller tries again)."""
        try:
            activation = self.silo.activation_of(consumer)
        except RaygrainError as exc:
            get_logger().warning("stream_consumer_unknown", actor=str(consumer), error=repr(exc))
            raise
        if activation.state not in _LIVE:
            return None
        return Consumer.of(activation, self).cursor(stream, sub, start)

    def _later(self, target: ActorId, method: str, args: list[Any]) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(max(self.settings.retry_delay, 0.01), self.send, target, method, args)

    def _on_replay(self, request: Request, args: list[Any]) -> None:
        letter = decode(args[0])
        if not isinstance(letter, DeadLetter):
            self.silo.reply_error(request, InvalidStreamError("not a dead letter"), "replay")
            return
        if not self.silo.owns(request):
            return
        cls = self.silo.registry.resolve(letter.consumer.type_name)
        check_consumes(cls, str(letter.consumer), f"the dead letter {letter.id}")
        activation = self.silo.activation_of(letter.consumer)
        event = StreamEvent(
            letter.stream, letter.data, letter.position, letter.subscription, letter.event_id, True
        )

        async def turn() -> None:
            assert activation.instance is not None
            await activation.instance.on_stream_event(event)

        def ended(outcome: TurnOutcome) -> None:
            if outcome is None:
                self._serve(request, self.dead_letters.replayed(letter), hub=False)
            elif outcome == DROPPED:
                error = SiloUnavailableError(f"{letter.consumer} went away; replay again")
                self.silo.reply_error(request, error, f"replay of {letter.id}")
            else:
                assert isinstance(outcome, Exception)
                self.silo.reply_error(request, outcome, f"replay of {letter.id}")

        run_as_turn(activation, f"replay {letter.stream}", turn, ended)


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        get_logger().info("stream_message_failed", error=repr(future.exception()))


def _stream(args: list[Any]) -> StreamId:
    return StreamId(args[0], args[1])


def _wire(stream: StreamId) -> list[Any]:
    return [stream.namespace, stream.key]


def _consumer_wire(consumer: ActorId, cursor: Cursor) -> list[Any]:
    return [consumer.type_name, consumer.key, cursor.subscription, cursor.start]
