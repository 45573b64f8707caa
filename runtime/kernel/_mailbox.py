"""An activation's mailbox and its admission rule: which delivered call may start when.

One non-interleaving turn at a time; read-only turns may run together; calls to a reentrant
class or an ``@always_interleave`` method run whenever they arrive. Queued calls start in
arrival order. A capability may hold an activation (``guard``) or govern a call (its
``ticket``): then its verdict (``Admission``) comes first. ``Mailbox`` is the base of
``Activation``; the turn itself is started by ``TurnRunner._start``.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raygrain.actors import (
    Actor,
    ActorId,
    ActorMethod,
    ActorOptions,
    ActorOverloadedError,
    DeadlockError,
)
from raygrain.runtime.kernel._extensions import Admission, Guard, Ticket, TurnTimings
from raygrain.runtime.kernel._logging import get_logger
from raygrain.runtime.kernel._messages import Request

if TYPE_CHECKING:
    from raygrain.runtime.kernel._silo import Silo

__all__ = ["ActivationState", "Delivery", "Mailbox"]

# After an eagerly started exclusive turn had to wait, the next ones start on a runner task, at
# first this many, then twice as many after each eager try that had to wait again, up to the
# most; an eager try that did not wait makes every turn eager again (see TurnRunners.run). An
# eager start that has to wait costs a handover to a runner and then drives the rest of the
# turn from Python; with a store that makes every changing turn wait (MemoryStorage with latency,
# or the storage server), trying eagerly every 8th turn cost ~7% of the writes/s, every 32nd ~1%.
# (On SQLite a turn does not wait for its commit at all: see TurnRunner._queue_write.)
_FIRST_LAZY_STARTS = 15
_MOST_LAZY_STARTS = 255


class ActivationState(enum.Enum):
    ACTIVATING = "activating"
    VALID = "valid"
    DEACTIVATING = "deactivating"
    INVALID = "invalid"


@dataclass(slots=True)
class Delivery:
    """A request accepted by a silo, decoded and checked, waiting for its turn."""

    request: Request
    method: ActorMethod
    args: list[Any]
    kwargs: dict[str, Any]
    expires_at: float
    ticket: Ticket | None = None  # set by a capability that governs this call
    keeps_alive: bool = True  # whether the turn counts as use (idle collection)
    # Per-turn values of the capabilities observing turns (turn_started/turn_ended), by key.
    extras: dict[str, Any] | None = None
    # The extensions' timings of this type and method's turns (Extension.turn_timings); None:
    # not looked up yet (the turn asks the silo).
    timings: tuple[TurnTimings, ...] | None = None


class Mailbox:
    """The scheduling half of an activation: counts the turns running, queues the rest."""

    __slots__ = (
        "_lazy_starts",
        "_lazy_window",
        "actor_id",
        "cls",
        "exclusive",
        "guard",
        "interleaved",
        "mailbox",
        "options",
        "readers",
        "silo",
        "state",
    )

    def __init__(self, silo: Silo, actor_id: ActorId, cls: type[Actor[Any]]) -> None:
        self.silo = silo
        self.actor_id = actor_id
        self.cls = cls
        self.options: ActorOptions = cls.__actor_options__
        self.state = ActivationState.ACTIVATING
        # Created on first use: most activations never queue, and an empty deque is ~600 bytes.
        self.mailbox: deque[Delivery] | None = None
        self.exclusive = False
        self.readers = 0
        self.interleaved = 0
        self.guard: Guard | None = None  # a capability holding this activation (see Guard)
        self._lazy_starts = 0  # turns still to start on a runner
        self._lazy_window = 0  # how many the last eager try that had to wait left

    def _start(self, delivery: Delivery, eager: bool = False) -> bool | None:
        raise NotImplementedError  # TurnRunner

    def _where(self, method: ActorMethod) -> str:
        return f"{self.actor_id}.{method.name} on {self.silo.name}"

    def enqueue(self, delivery: Delivery) -> None:
        options = delivery.method.options
        if self.guard is not None or delivery.ticket is not None:
            verdict = self._admit(delivery) if self.state is ActivationState.VALID else None
            if verdict is None or verdict is Admission.WAIT:
                self._queue(delivery)  # admitted when its turn comes, after the earlier calls
                if self.state is ActivationState.VALID:
                    self.pump()
                return
            if verdict is Admission.DIVERTED:
                return
        if self.options.reentrant or options.always_interleave:
            if self.state is ActivationState.VALID:
                self.interleaved += 1
                self._start(delivery, eager=True)
            else:
                self._queue(delivery)
            return
        if (
            not self.mailbox
            and not (self.exclusive or self.readers or self.interleaved)
            and self.state is ActivationState.VALID
        ):
            # The common case, an idle activation: start the turn without queueing it.
            if delivery.method.options.read_only:
                self.readers += 1
                self._start(delivery, eager=True)
                return
            self.exclusive = True
            if self._lazy_starts:
                self._lazy_starts -= 1
                self._start(delivery)
                return
            over = self._start(delivery, eager=True)
            if over:
                self._lazy_window = 0
            elif over is not None:  # (None: it could not start eagerly, which says nothing)
                # It had to wait (for the disk, most likely): the next turns probably will
                # too, and then an eager start only costs a handover to a runner.
                window = min(2 * self._lazy_window + 1, _MOST_LAZY_STARTS)
                self._lazy_window = self._lazy_starts = max(window, _FIRST_LAZY_STARTS)
            return
        if delivery.request.chain and self._joins_readers(delivery):
            # A read-only call made from a turn runs beside the running readers now, even with
            # a writer queued (which waits for them anyway). Its chain's activations wait for
            # it: queued behind that writer, it would deadlock when one of the readers waits
            # for one of them, through its own chain (a call back into a read-only turn) or
            # through another's (two read-only chains crossing two actors, A -> B -> A and
            # B -> A -> B, each with a writer queued), which no chain shows. A reader from
            # outside any turn holds nothing: it queues behind the writer, which it cannot
            # starve.
            self.readers += 1
            self._start(delivery)
            return
        if (
            self.actor_id in delivery.request.chain
            and not self._can_start_now(delivery)
            and not self._another_worker_may_be_waiting()
        ):
            self.silo.reply_error(
                delivery.request,
                DeadlockError(
                    f"call {self.actor_id}.{delivery.method.name} would deadlock: the call chain "
                    f"{' -> '.join(map(str, delivery.request.chain))} -> {self.actor_id} returns "
                    f"to {self.actor_id}, which is busy in a turn this call would wait for"
                ),
                self._where(delivery.method),
            )
            return
        self._queue(delivery)
        if self.state is ActivationState.VALID:
            self.pump()

    def pump(self) -> None:
        """Start every queued turn that may run now, in arrival order."""
        mailbox = self.mailbox
        if mailbox is None:
            return
        while mailbox and self.state is ActivationState.VALID:
            delivery = mailbox[0]
            if self.guard is not None or delivery.ticket is not None:
                verdict = self._admit(delivery)
                if verdict is Admission.WAIT:
                    return
                if verdict is Admission.DIVERTED:
                    mailbox.popleft()
                    continue
            options = delivery.method.options
            if self.options.reentrant or options.always_interleave:
                self.interleaved += 1
            elif options.read_only:
                if self.exclusive:
                    return
                self.readers += 1
            elif self.exclusive or self.readers or self.interleaved:
                return
            else:
                self.exclusive = True
            mailbox.popleft()
            self._start(delivery)
        if not mailbox:
            self.mailbox = None  # an idle activation keeps no queue

    def _admit(self, delivery: Delivery) -> Admission:
        """The verdict of the capability governing ``delivery`` (its ticket), or else of the
        one holding the activation (its guard)."""
        if delivery.ticket is not None:
            return delivery.ticket.admit(self, delivery)  # type: ignore[arg-type]
        assert self.guard is not None
        return self.guard.admit(self, delivery)  # type: ignore[arg-type]

    def _start_interleaving(self) -> None:
        # Interleaving calls that queued while the actor was activating never wait behind
        # others: start them wherever they are in the mailbox.
        mailbox = self.mailbox
        if not mailbox:
            return
        waiting = [
            d for d in mailbox if self.options.reentrant or d.method.options.always_interleave
        ]
        for delivery in waiting:
            mailbox.remove(delivery)
            self.interleaved += 1
            self._start(delivery)

    def _queue(self, delivery: Delivery) -> None:
        mailbox = self.mailbox
        if mailbox is None:
            mailbox = self.mailbox = deque()
        elif len(mailbox) >= self.silo.options.max_queued_calls:
            # Orleans' hard limit on enqueued requests: beyond it a call is refused at once,
            # so callers learn of the overload now (not at their deadline) and memory stays
            # bounded. The caller may retry after a pause.
            self._refuse_overloaded(delivery)
            return
        mailbox.append(delivery)

    def _refuse_overloaded(self, delivery: Delivery) -> None:
        limit = self.silo.options.max_queued_calls
        error = ActorOverloadedError(
            f"{self.actor_id} has {limit} calls queued (max_queued_calls): "
            f"{delivery.method.name} was refused before it ran; retry after a pause"
        )
        from raygrain.runtime.kernel._internal import InternalTurn  # (imports this module)

        if isinstance(delivery.ticket, InternalTurn):
            delivery.ticket.dropped()  # the runtime's own turn: its capability tries again
            return
        if delivery.method.options.one_way:  # its caller was told "accepted" already
            get_logger().warning(
                "one_way_call_dropped", actor=str(self.actor_id), method=delivery.method.name
            )
            return
        self.silo.reply_error(delivery.request, error, self._where(delivery.method))

    def queued(self) -> int:
        return len(self.mailbox) if self.mailbox else 0

    def is_idle(self) -> bool:
        return not (
            self.exclusive or self.readers or self.interleaved or self.mailbox or self.guard
        )

    def is_idle_of_turns(self) -> bool:
        return not (self.exclusive or self.readers or self.interleaved)

    def _another_worker_may_be_waiting(self) -> bool:
        """Whether the activation of this stateless worker that the chain passes through is
        another than this one: this one has not even begun activating (no instance yet), so
        it made no call; the router made it for this call (the others were busy, or on
        another silo). One in its ``on_activate`` may be the chain's, and is checked."""
        return (
            self.options.stateless_worker
            and self.state is not ActivationState.VALID
            and getattr(self, "instance", None) is None
        )

    def _joins_readers(self, delivery: Delivery) -> bool:
        return (
            delivery.method.options.read_only
            and bool(self.readers)
            and not self.exclusive
            and self.state is ActivationState.VALID
        )

    def _can_start_now(self, delivery: Delivery) -> bool:
        if self.state is not ActivationState.VALID or self.mailbox or self.exclusive:
            return False
        return delivery.method.options.read_only or not (self.readers or self.interleaved)
