"""The consuming side: one activation's stream subscriptions, delivered as turns of the actor.

Each (stream, subscription) an activation consumes has a ``Cursor``: the events held for it
(at most ``max_in_flight``), the highest position known to exist (``head``), and whether a
delivery turn is queued. A delivery turn takes up to ``max_batch`` events and calls
``on_stream_event`` for each. On a durable stream the turn's state change and the new
position are written in one atomic write (``write_many``: the actor's state record and the
activation's positions record), so each event's effect lands exactly once even though
delivery is at least once: an event at or below the committed position is skipped. Events the
cursor does not hold (evicted by back-pressure, or published while the actor was inactive)
are read back from the log. A turn that raises is retried one event at a time; an event that
fails ``max_attempts`` times goes to the dead letters and its position is passed.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from raygrain.actors import (
    ActorId,
    InconsistentStateError,
    SiloUnavailableError,
    StreamEvent,
    StreamId,
    decode,
    encode,
)
from raygrain.runtime.kernel import (
    DROPPED,
    Activation,
    ActivationState,
    Delivery,
    InternalTurn,
    Request,
    TurnOutcome,
    get_logger,
    run_as_turn,
)
from raygrain.runtime.streams._delivery_method import delivery_method
from raygrain.runtime.streams._log import positions_id, require_log
from raygrain.runtime.streams._service import StreamServiceBase
from raygrain.storage import StateWrite

__all__ = ["Consumer", "Cursor", "Held"]

EXTRAS_KEY = "streams"
IMPLICIT = "implicit"
Held = tuple[int, bytes, str]  # (position, encoded data, event id)
Waiter = Callable[[Exception | None], None]


class _DeadLetters(Protocol):
    async def add(
        self, consumer: ActorId, cursor: Cursor, held: Held, attempts: int, error: str
    ) -> None: ...


class StreamService(StreamServiceBase, Protocol):
    """What consumers use of the silo's stream service (``_extension.StreamService``)."""

    fast_dropped: int  # fast events dropped by back-pressure

    @property
    def dead_letters(self) -> _DeadLetters: ...

    def redeliver(self, consumer: ActorId, cursor: Cursor) -> None: ...

    def spawn_dead_letter(
        self, consumer: ActorId, cursor: Cursor, held: Any, attempts: int, error: str
    ) -> None: ...


class Consumer:
    """The stream side of one activation (kept in ``Activation.extras``)."""

    __slots__ = (
        "activation",
        "cursors",
        "etag",
        "observers",
        "positions",
        "positions_id",
        "service",
    )

    def __init__(self, activation: Activation, service: StreamService) -> None:
        self.activation = activation
        self.service = service
        self.cursors: dict[str, Cursor] = {}
        self.positions: dict[str, int] | None = None  # committed; None until loaded
        self.positions_id = positions_id(activation.actor_id)  # where they are stored
        self.etag: str | None = None
        self.observers: list[str] = []  # observer ids this activation registered

    @classmethod
    def of(cls, activation: Activation, service: StreamService) -> Consumer:
        extras = activation.extras
        if extras is None:
            extras = activation.extras = {}
        found = extras.get(EXTRAS_KEY)
        if found is None:
            found = extras[EXTRAS_KEY] = cls(activation, service)
        return found

    def cursor(self, stream: StreamId, subscription: str, start: int) -> Cursor:
        key = f"{stream.log_name()}|{subscription}"
        found = self.cursors.get(key)
        if found is None:
            durable = not self.service.settings.is_fast(stream.namespace)
            found = self.cursors[key] = Cursor(self, key, stream, subscription, start, durable)
        return found

    async def load(self) -> None:
        """Read the committed positions (inside a turn: nothing else writes them meanwhile)."""
        if self.positions is None:
            record = await self.service.storage.read(self.positions_id)
            self.etag = record.etag
            self.positions = dict(decode(record.data)) if record.data else {}

    async def commit(self, key: str, position: int) -> None:
        """Write the turn's state change and ``key``'s new position in one atomic write."""
        assert self.positions is not None
        activation = self.activation
        slot = activation.slot
        positions = {**self.positions, key: position}
        writes = [StateWrite(self.positions_id, encode(positions), self.etag)]
        data = None
        if slot is not None and activation.instance is not None:
            while slot.writing:  # one write of an activation at a time (see StateSlot)
                await slot.write_finished()
            data = slot.changed(activation.instance.state)
        if slot is not None and data is not None:
            writes.insert(0, StateWrite(activation.actor_id, data, slot.etag))
            slot.start_write(data)
        try:
            etags = await self.service.storage.write_many(writes)
        except InconsistentStateError:
            if slot is not None:
                slot.fenced = True  # a newer activation wrote: this one is a stale duplicate
            raise
        finally:
            if slot is not None and data is not None:
                slot.end_write()
        if slot is not None and data is not None:
            slot.adopt(data, etags[0])
        self.positions, self.etag = positions, etags[-1]

    def unsubscribed(self, stream: StreamId, subscription: str) -> None:
        """The activation dropped ``subscription``: what its cursor holds or would read is not
        delivered any more, nor what reaches it later (sent before the hub forgot it)."""
        cursor = self.cursor(stream, subscription, 0)
        cursor.closed = True
        cursor.held.clear()
        if cursor.retry is not None:
            cursor.retry.cancel()
            cursor.retry = None
        cursor.fail_waiters(None)  # (nothing more to consume for it)

    async def rewind(self, stream: StreamId, subscription: str, position: int) -> None:
        """Set ``subscription``'s position (its own write: the calling turn's state changes
        commit as usual, with the turn) and consume again from there."""
        await self.load()
        cursor = self.cursor(stream, subscription, 0)
        assert self.positions is not None
        previous = self.positions.get(cursor.key, cursor.start)
        positions = {**self.positions, cursor.key: position}
        self.etag = await self.service.storage.write(
            self.positions_id, encode(positions), self.etag
        )
        self.positions = positions
        cursor.held.clear()
        cursor.head = max(cursor.head, previous)
        cursor.schedule()

    def dropped(self) -> None:
        """The activation went away: its cursors stop; the service re-routes their work."""
        for cursor in self.cursors.values():
            cursor.fail_waiters(
                SiloUnavailableError(f"{self.activation.actor_id} deactivated while catching up")
            )
            if cursor.retry is not None:
                cursor.retry.cancel()
                cursor.retry = None
            if cursor.durable and (cursor.scheduled or cursor.pending()):
                self.service.redeliver(self.activation.actor_id, cursor)
        self.cursors.clear()


class Cursor:
    """One subscription of one activation: what it holds, what exists, what is queued."""

    __slots__ = (
        "attempts",
        "attempts_after",
        "before_failure",
        "closed",
        "consumer",
        "durable",
        "failed_at",
        "head",
        "held",
        "key",
        "last_error",
        "retry",
        "scheduled",
        "start",
        "stream",
        "subscription",
        "waiters",
    )

    def __init__(
        self,
        consumer: Consumer,
        key: str,
        stream: StreamId,
        subscription: str,
        start: int,
        durable: bool,
    ) -> None:
        self.consumer = consumer
        self.key = key
        self.stream = stream
        self.subscription = subscription
        self.start = start  # the position of an explicit subscription when it was made
        self.durable = durable
        self.closed = False  # unsubscribed: delivers nothing more
        self.head = 0
        self.held: deque[Held] = deque()
        self.scheduled = False
        self.attempts = 0  # failed deliveries of the first held event
        self.last_error = ""  # the last one's error, for the dead letter
        self.failed_at: int | None = None  # the index of the event being handled, if any
        self.before_failure: int | None = None  # events to take before a failed one
        # The attempts the failed one has had once those are taken (its failure counts).
        self.attempts_after = 0
        self.retry: asyncio.TimerHandle | None = None
        self.waiters: list[tuple[int, Waiter]] = []

    @property
    def position(self) -> int | None:
        positions = self.consumer.positions
        return None if positions is None else positions.get(self.key, self.start)

    def offer(self, head: int, events: list[Held]) -> None:
        """Events published (``head``: the highest position now known to exist)."""
        if self.closed:
            return
        limit = self.consumer.service.settings.max_in_flight
        held = self.held
        if self.durable:
            self.head = max(self.head, head)
            for event in events:
                last = held[-1][0] if held else self.position
                # Hold only what follows on; anything else is read back from the log.
                if last is not None and event[0] == last + 1 and len(held) < limit:
                    held.append(event)
        else:
            for event in events:
                if len(held) >= limit:
                    self.consumer.service.fast_dropped += 1  # fast streams may lose events
                    continue
                held.append(event)
        self.schedule()

    def wait_for(self, head: int, waiter: Waiter) -> None:
        """Call ``waiter(None)`` once everything up to ``head`` is consumed."""
        self.head = max(self.head, head)
        position = self.position
        if self.closed or (position is not None and position >= head):
            waiter(None)
            return
        self.waiters.append((head, waiter))
        self.schedule()

    def fail_waiters(self, error: Exception | None) -> None:
        waiters, self.waiters = self.waiters, []
        for _, waiter in waiters:
            waiter(error)

    def _tell_waiters(self) -> None:
        position = self.position
        if position is None or not self.waiters:
            return
        done = [w for w in self.waiters if w[0] <= position]
        self.waiters = [w for w in self.waiters if w[0] > position]
        for _, waiter in done:
            waiter(None)

    def pending(self) -> bool:
        if self.closed:
            return False
        if not self.durable:
            return bool(self.held)
        position = self.position
        return position is None or self.head > position or bool(self.held)

    def schedule(self) -> None:
        activation = self.consumer.activation
        if self.scheduled or self.retry is not None or not self.pending():
            return
        if activation.state not in (ActivationState.ACTIVATING, ActivationState.VALID):
            return
        self.scheduled = True
        name = f"stream {self.stream}"
        if self.durable:
            ticket = DurableTurn(self)
            activation.enqueue(ticket.delivery(activation, name))
        else:
            run_as_turn(activation, name, self._deliver_fast, self._fast_ended)

    # -- durable ---------------------------------------------------------------------------

    async def _deliver(self, ticket: DurableTurn) -> None:
        consumer = self.consumer
        service = consumer.service
        if self.closed:
            return
        await consumer.load()
        position = self.position
        assert position is not None
        held = self.held
        while held and held[0][0] <= position:
            held.popleft()  # consumed already (a redelivery)
        if (not held or held[0][0] != position + 1) and self.head > position:
            held.clear()  # (never skip a position: what does not follow on is read again)
            log = require_log(service.storage, self.stream)
            limit = min(service.settings.max_batch, service.settings.max_in_flight)
            stored = await log.read_stream(self.stream.log_name(), position + 1, limit)
            fresh = [(e.version, e.data, e.event_id) for e in stored]
            # Events offered while the read was under way follow on only after it.
            last = fresh[-1][0] if fresh else position
            for offered in held:
                if offered[0] == last + 1:
                    fresh.append(offered)
                    last += 1
            held.clear()
            held.extend(fresh)
            self.head = max(self.head, last)
        if not held:
            return
        if self.attempts >= service.settings.max_attempts:
            first = held[0]
            await service.dead_letters.add(
                consumer.activation.actor_id, self, first, self.attempts, self.last_error
            )
            ticket.staged = first[0]
            return
        count = self._count()
        instance = consumer.activation.instance
        assert instance is not None
        for index in range(count):
            version, data, event_id = held[index]
            event = StreamEvent(self.stream, decode(data), version, self.subscription, event_id)
            self.failed_at = index  # (until it returns: an error now is the consumer's)
            await instance.on_stream_event(event)
            ticket.staged = version
            if self.closed:  # it unsubscribed: the rest of the batch is not its any more
                break
        self.failed_at = None

    def _count(self) -> int:
        """How many held events the next turn takes: the ones before an event that failed
        in a batch (they commit), one while retrying, else a batch."""
        count, self.before_failure = self.before_failure, None
        if count is None:
            count = 1 if self.attempts else self.consumer.service.settings.max_batch
        return min(count, len(self.held))

    def _failed(self, error: Exception) -> None:
        """A delivery turn raised: the consumer (counts as an attempt on the event it failed
        on) or the runtime (storage, say: retried, never dead-lettered for it)."""
        failed_at, self.failed_at = self.failed_at, None
        if failed_at is not None and failed_at > 0:
            self.before_failure = failed_at  # commit the events before it first
            self.attempts_after = 1  # (then it is first, its failure counted)
            self.last_error = repr(error)
        elif failed_at == 0:
            self.attempts += 1
            self.attempts_after = 0
            self.last_error = repr(error)
        self._retry_later(error)

    def _delivered(self) -> None:
        """A delivery turn took its events: the next first one has had no failed attempt,
        unless it failed in the batch just taken before it."""
        self.attempts, self.attempts_after = self.attempts_after, 0

    def _durable_ended(self, ticket: DurableTurn, outcome: TurnOutcome) -> None:
        self.scheduled = False
        if outcome == DROPPED:
            return  # the activation went away (Consumer.dropped re-routes)
        if isinstance(outcome, Exception):
            self._failed(outcome)
            return
        if ticket.staged is not None:
            while self.held and self.held[0][0] <= ticket.staged:
                self.held.popleft()
            self._delivered()
        self._tell_waiters()
        self.schedule()

    # -- fast ------------------------------------------------------------------------------

    async def _deliver_fast(self) -> None:
        service = self.consumer.service
        held = self.held
        if self.closed:
            return
        if self.attempts >= service.settings.max_attempts:
            first = held.popleft()
            service.spawn_dead_letter(
                self.consumer.activation.actor_id, self, first, self.attempts, self.last_error
            )
            return
        count = self._count()
        instance = self.consumer.activation.instance
        assert instance is not None
        for index in range(count):
            _, data, event_id = held[index]
            event = StreamEvent(self.stream, decode(data), 0, self.subscription, event_id)
            self.failed_at = index
            await instance.on_stream_event(event)
            if self.closed:  # it unsubscribed: the rest is not its any more (held is empty)
                break
        self.failed_at = None
        for _ in range(min(count, len(held))):
            held.popleft()

    def _fast_ended(self, outcome: TurnOutcome) -> None:
        self.scheduled = False
        if outcome == DROPPED:
            return  # fast events of a vanished activation are lost, as documented
        if isinstance(outcome, Exception):
            self._failed(outcome)
            return
        self._delivered()
        self.schedule()

    def _retry_later(self, error: Exception) -> None:
        get_logger().warning(
            "stream_event_failed",
            actor=str(self.consumer.activation.actor_id),
            stream=str(self.stream),
            attempt=self.attempts,
            error=repr(error),
        )
        delay = self.consumer.service.settings.retry_delay
        self.retry = asyncio.get_running_loop().call_later(delay, self._retry_now)

    def _retry_now(self) -> None:
        self.retry = None
        self.schedule()


class DurableTurn(InternalTurn):
    """The ticket and scope of a durable delivery turn: it defers the per-turn commit and
    writes the state with the position itself (``Consumer.commit``)."""

    __slots__ = ("cursor", "staged")

    defers_commit = True

    def __init__(self, cursor: Cursor) -> None:
        super().__init__(lambda outcome: cursor._durable_ended(self, outcome))
        self.cursor = cursor
        self.staged: int | None = None  # the position this turn consumed up to

    def delivery(self, activation: Activation, name: str) -> Delivery:
        request = Request(0, activation.actor_id, name, b"", "", math.inf)
        turn = partial(self.cursor._deliver, self)
        return Delivery(request, delivery_method(name), [turn], {}, math.inf, self, True)

    async def succeeded(self) -> None:
        if self.staged is not None:
            await self.cursor.consumer.commit(self.cursor.key, self.staged)
        self._end(None)

    async def failed(self, error: Exception) -> None:
        self.cursor.consumer.activation.rollback()
        self._end(error)
