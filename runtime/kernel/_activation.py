"""One activation: an actor instance in memory, its mailbox and its turn scheduler.

Calls are delivered to the mailbox and run as turns, one at a time to completion unless the
class is reentrant or the method interleaves; read-only turns may run together. A changing turn
commits the state before its reply is sent, and rolls it back when the method raises. The
activation is also the ``ActorRuntime`` its instance talks to.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raygrain.actors import (
    Actor,
    ActorId,
    ActorKey,
    ActorMethod,
    ActorRef,
    DeactivationReason,
    DeadlockError,
    InconsistentStateError,
    InvalidCallError,
    MethodOptions,
    Persistence,
    SerializationError,
    TransactionAbortedError,
    TurnRolledBackError,
    current_invoker,
    decode_state,
    encode,
    encode_error,
    encode_state,
)
from raygrain.runtime.kernel._caller import current_chain
from raygrain.runtime.kernel._logging import get_logger
from raygrain.runtime.kernel._messages import Request
from raygrain.runtime.transactions import TransactionContext, TxTicket, current_transaction

if TYPE_CHECKING:
    from raygrain.runtime.kernel._silo import Silo

__all__ = ["Activation", "ActivationState", "Delivery"]


class Admission(enum.Enum):
    RUN = "run"
    DIVERTED = "diverted"


_PLAIN = float("inf")  # plain calls sort after every transaction waiting for a lock
# After an eagerly started exclusive turn had to wait, the next ones start on a runner task, at
# first this many, then twice as many after each eager try that had to wait again, up to the
# most; an eager try that did not wait makes every turn eager again (see Silo.run_turn). An
# eager start that has to wait costs a handover to a runner and then drives the rest of the
# turn from Python; with a store that makes every changing turn wait (MemoryStorage with latency,
# or the storage server), trying eagerly every 8th turn cost ~7% of the writes/s, every 32nd ~1%.
# (On SQLite a turn does not wait for its commit at all: see _queue_write.)
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
    tx: TxTicket | None = None


@dataclass(slots=True)
class TxHold:
    """The transaction holding an activation's lock. Its changes live in the instance's state;
    ``Activation._committed`` still holds the state from before it, to roll back to."""

    txid: str
    start: float
    expires_at: float  # loop time: the lease, then the decision timeout (see Silo.sweep_locks)
    prepared: bool = False
    data: bytes | None = None  # the prepared new state (None: unchanged)


class Activation:
    __slots__ = (
        "_activating",
        "_committed",
        "_deactivated",
        "_etag",
        "_idle_waiter",
        "_in_flight",
        "_lazy_starts",
        "_lazy_window",
        "_queued_turn",
        "_rollbacks",
        "_write_waiters",
        "_writing",
        "actor_id",
        "cls",
        "deactivate_requested",
        "exclusive",
        "instance",
        "interleaved",
        "last_used",
        "mailbox",
        "options",
        "readers",
        "silo",
        "state",
        "tx",
        "tx_blocked",
        "tx_refused",
    )

    def __init__(self, silo: Silo, actor_id: ActorId, cls: type[Actor[Any]]) -> None:
        self.silo = silo
        self.actor_id = actor_id
        self.cls = cls
        self.options = cls.__actor_options__
        self.state = ActivationState.ACTIVATING
        # Created on first use: most activations never queue, and an empty deque is ~600 bytes.
        self.mailbox: deque[Delivery] | None = None
        self.instance: Actor[Any] | None = None
        self.exclusive = False
        self.readers = 0
        self.interleaved = 0
        self.last_used = silo.clock.now()
        self.deactivate_requested = False
        self._etag: str | None = None
        self._committed: bytes | None = None
        self._idle_waiter: asyncio.Future[None] | None = None
        self._deactivated: asyncio.Future[None] | None = None
        self._lazy_starts = 0  # turns still to start on a runner
        self._lazy_window = 0  # how many the last eager try that had to wait left
        self._writing = False
        self._in_flight: bytes | None = None  # the data of the write under way, if any
        self._rollbacks = 0  # how many times the state was rolled back (see _run_turn)
        self._queued_turn: tuple[Request, ActorMethod, bytes] | None = None  # _queue_write
        self._write_waiters: asyncio.Future[None] | None = None
        self._activating: asyncio.Future[None] | None = None
        self.tx: TxHold | None = None  # the transaction holding this actor, if any
        self.tx_blocked: deque[Delivery] | None = None  # calls waiting for it to end
        self.tx_refused: str | None = None  # the last transaction that aborted here

    def start(self) -> None:
        """Begin activating in the background; calls queue in the mailbox meanwhile."""
        self._activating = self.silo.spawn_clean(self.activate())

    # -- lifecycle ---------------------------------------------------------------------------

    async def activate(self) -> None:
        """Load the state, build the instance, run ``on_activate``, then start the mailbox."""
        self._enter_turn(())
        try:
            if not self.options.stateless_worker:
                while (gate := self.silo.activation_gate) is not None and not gate.done():
                    await asyncio.shield(gate)
            state = await self._load_state()
            instance = self.cls.__new__(self.cls)
            instance._context = self
            instance.state = state
            instance.__init__()  # type: ignore[misc]  # user __init__ takes no arguments
            self.instance = instance
            await instance.on_activate()
        except Exception as exc:
            get_logger().warning("activation_failed", actor=str(self.actor_id), error=repr(exc))
            self.state = ActivationState.INVALID
            self.silo.forget(self)
            failed, self.mailbox = self.mailbox or (), None
            for delivery in failed:
                self.silo.reply_error(delivery.request, exc, self._where(delivery.method))
            return
        get_logger().debug("activated", actor=str(self.actor_id), silo=self.silo.name)
        self._activating = None  # the finished task and its context are no longer needed
        self.state = ActivationState.VALID
        self._start_interleaving()
        self.pump()

    async def deactivate(self, reason: DeactivationReason) -> None:
        """Finish running turns, run ``on_deactivate``, drop the activation and re-route any
        queued calls (they activate the actor afresh, wherever the ring now places it)."""
        await asyncio.shield(self.begin_deactivation(reason))

    def begin_deactivation(self, reason: DeactivationReason) -> asyncio.Future[None]:
        """Stop starting turns now (calls from here on queue for re-routing) and finish the
        deactivation in the background; returns a future that completes with it."""
        if self._deactivated is None:
            self._deactivated = asyncio.get_running_loop().create_future()
            if self.state is ActivationState.VALID:
                self.state = ActivationState.DEACTIVATING
            self.silo.spawn_clean(self._finish_deactivation(reason, self._deactivated))
        return self._deactivated

    async def _finish_deactivation(
        self, reason: DeactivationReason, done: asyncio.Future[None]
    ) -> None:
        if self._activating is not None and not self._activating.done():
            # Let the activation finish first so on_deactivate always follows on_activate.
            await asyncio.shield(self._activating)
            if self.state is ActivationState.VALID:
                self.state = ActivationState.DEACTIVATING
        if self.state is ActivationState.DEACTIVATING:
            await self._wait_idle()
            self._enter_turn(())
            try:
                assert self.instance is not None
                await self.instance.on_deactivate(reason)
            except Exception as exc:
                get_logger().warning(
                    "on_deactivate_failed", actor=str(self.actor_id), error=repr(exc)
                )
        self.state = ActivationState.INVALID
        self.silo.forget(self)
        get_logger().debug("deactivated", actor=str(self.actor_id), reason=reason.value)
        if self.tx is not None:
            self.tx = None  # uncommitted changes go; a prepare for it now finds no activation
            self.silo.locked.discard(self)
        queued = [*(self.mailbox or ()), *(self.tx_blocked or ())]
        self.mailbox = self.tx_blocked = None
        for delivery in queued:
            self.silo.deliver_request(delivery.request)
        done.set_result(None)

    # -- scheduling --------------------------------------------------------------------------

    def enqueue(self, delivery: Delivery) -> None:
        options = delivery.method.options
        if self.tx is not None or delivery.tx is not None:
            if self.tx is None and not (self._can_lock() and self.state is ActivationState.VALID):
                self._queue(delivery)  # locks when its turn comes, after the earlier calls
                if self.state is ActivationState.VALID:
                    self.pump()
                return
            if self._admit(delivery) is Admission.DIVERTED:
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
        if self.actor_id in delivery.request.chain and not self._can_start_now(delivery):
            self.silo.reply_error(
                delivery.request,
                DeadlockError(
                    f"call {self.actor_id}.{delivery.method.name} would deadlock: the call chain "
                    f"{' -> '.join(map(str, delivery.request.chain))} -> {self.actor_id} returns "
                    f"to {self.actor_id}, which is busy in a non-reentrant turn"
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
            if self.tx is not None or delivery.tx is not None:
                if self.tx is None and not self._can_lock():
                    return
                if self._admit(delivery) is Admission.DIVERTED:
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
        if self.mailbox is None:
            self.mailbox = deque()
        self.mailbox.append(delivery)

    def queued(self) -> int:
        return len(self.mailbox) if self.mailbox else 0

    def is_idle(self) -> bool:
        return not (self.exclusive or self.readers or self.interleaved or self.mailbox or self.tx)

    def _can_start_now(self, delivery: Delivery) -> bool:
        if self.state is not ActivationState.VALID or self.mailbox or self.exclusive:
            return False
        return delivery.method.options.read_only or not (self.readers or self.interleaved)

    def _start(self, delivery: Delivery, eager: bool = False) -> bool | None:
        return self.silo.run_turn(self._run_turn(delivery), eager)

    async def _run_turn(self, delivery: Delivery) -> None:
        request = delivery.request
        method = delivery.method
        options = method.options
        ticket = delivery.tx
        held = self.tx
        in_tx = held is not None and ticket is not None and ticket.txid == held.txid
        per_turn = (
            not options.read_only
            and not in_tx  # a transaction's changes commit with the transaction
            and self.cls.__actor_state_type__ is not None
            and self.options.persistence is Persistence.PER_TURN
        )
        ends_when_written = False
        rollbacks = self._rollbacks
        try:
            if self.silo.loop_time() > delivery.expires_at:
                return  # the caller has already timed out; running it now would be a surprise
            transaction = (
                TransactionContext.joined(ticket, self.actor_id)
                if in_tx and ticket is not None
                else None
            )
            self._enter_turn(request.chain, transaction)
            try:
                result = await method.function(self.instance, *delivery.args, **delivery.kwargs)
                payload = self._encode_result(method, result)
                if per_turn:
                    # Encode only once no other write of this activation is under way: an
                    # interleaved turn that took the slot meanwhile may have written a newer
                    # state (with this turn's changes in it), which an older encoding would
                    # then overwrite.
                    while self._writing:
                        await self._write_finished()
                    if self._rollbacks != rollbacks:
                        raise TurnRolledBackError(
                            f"{self._where(method)}: a turn interleaved with this one failed "
                            "and rolled the shared state back while this one ran, so this "
                            "turn's changes may or may not have been stored"
                        )
                    data = self._changed_state()
                    if data is not None:
                        if self._queue_write(request, method, payload, data):
                            ends_when_written = True
                            return
                        await self._write(data)
                if transaction is not None and ticket is not None and ticket.coordinates:
                    await self.silo.coordinator.commit(ticket.txid, transaction.participants)
                ok = True
            except Exception as exc:
                # (A turn that a rollback already hit does not roll back again: that would
                # only discard the changes of the turns that started after it.)
                rolls_back = per_turn and not isinstance(exc, TurnRolledBackError)
                ok, payload = False, self._fail_turn(method, exc, rolls_back)
                if transaction is not None and ticket is not None:
                    await self._abandon(ticket, transaction)
            if not options.one_way:
                joined = (
                    ()
                    if transaction is None or ticket is None or ticket.coordinates
                    else (tuple(transaction.participants))
                )
                self.silo.reply(request, ok, payload, joined)
        finally:
            if not ends_when_written:
                self._end_turn(options)

    def _queue_write(
        self, request: Request, method: ActorMethod, payload: bytes, data: bytes
    ) -> bool:
        """Hand the turn's write to a provider that queues writes (``storage.QueuedWrites``):
        the turn then ends in ``_written`` once the write committed, with no task left waiting
        for it. False when the provider cannot (the turn then awaits its write as usual). The
        write slot must be free (``_writing`` False), as the caller checked just before."""
        queue_write = self.silo.queue_write
        if queue_write is None:
            return False
        # Only one write of an activation is ever under way (``_writing``), so the turn that
        # waits for it can wait here rather than in a closure per write; and it keeps only what
        # its end needs (each object a waiting turn keeps alive costs garbage collection time).
        self._start_write(data)
        self._queued_turn = (request, method, payload)
        try:
            queue_write(self.actor_id, data, self._etag, self._written)
        except BaseException:
            self._queued_turn = None
            self._end_write()
            raise
        return True

    def _written(self, outcome: str | Exception) -> None:
        """The end of a turn whose write was queued: reply once the write committed, or roll
        back and report the failure, then end the turn."""
        assert self._queued_turn is not None and self._in_flight is not None
        (request, method, payload), self._queued_turn = self._queued_turn, None
        try:
            if isinstance(outcome, Exception):
                self._end_write()  # first: the rollback goes back past the failed write
                ok, payload = False, self._fail_turn(method, outcome, True)
            else:
                self._etag, self._committed, ok = outcome, self._in_flight, True
                self._end_write()
            if not method.options.one_way:
                self.silo.reply(request, ok, payload, ())
        finally:
            self._end_turn(method.options)

    def _end_turn(self, options: MethodOptions) -> None:
        # In the order enqueue and pump count turns in: a read-only method of a reentrant class
        # (or one that always interleaves) counts as interleaved, not as a reader.
        if self.options.reentrant or options.always_interleave:
            self.interleaved -= 1
        elif options.read_only:
            self.readers -= 1
        else:
            self.exclusive = False
        self.last_used = self.silo.clock.now()
        self.pump()
        if self._idle_waiter is not None and self.is_idle_of_turns():
            self._idle_waiter.set_result(None)
            self._idle_waiter = None
        if self.deactivate_requested and self._deactivated is None:
            self.begin_deactivation(DeactivationReason.REQUESTED)

    def _encode_result(self, method: ActorMethod, result: Any) -> bytes:
        if result is None:
            return b""
        try:
            return encode(result)
        except SerializationError as exc:
            raise SerializationError(
                f"result of {self.actor_id.type_name}.{method.name}: {exc}"
            ) from None

    def _fail_turn(self, method: ActorMethod, exc: Exception, per_turn: bool) -> bytes:
        """Undo the turn's changes to the state and encode ``exc`` for the caller."""
        if per_turn:
            self._rollback()
        if isinstance(exc, InconsistentStateError):
            # A newer write exists: this activation is a stale duplicate. Drop it rather than
            # retry; the next call activates the actor afresh from storage.
            get_logger().warning("stale_activation_fenced", actor=str(self.actor_id))
            self.begin_deactivation(DeactivationReason.INCONSISTENT_STATE)
        else:
            get_logger().info(
                "call_failed",
                actor=str(self.actor_id),
                method=method.name,
                error=repr(exc),
            )
        return encode_error(exc, self._where(method))

    def _enter_turn(
        self, chain: tuple[ActorId, ...], transaction: TransactionContext | None = None
    ) -> None:
        # Runs inside the turn's own task, so these settings are private to the turn. (A set
        # costs more than a get; a runner's turns mostly leave the last two as they were.)
        current_chain.set((*chain, self.actor_id))
        invoker = self.silo.caller
        if current_invoker.get() is not invoker:
            current_invoker.set(invoker)
        if current_transaction.get() is not transaction:
            current_transaction.set(transaction)

    # -- transactions ------------------------------------------------------------------------

    def _can_lock(self) -> bool:
        return not (self.exclusive or self.readers or self.interleaved)

    def _admit(self, delivery: Delivery) -> Admission:
        """Whether ``delivery`` may run now as far as transactions go (``RUN``), or was set
        aside until the holder ends, or refused (``DIVERTED``)."""
        ticket, hold = delivery.tx, self.tx
        if ticket is not None and ticket.joins and ticket.txid == self.tx_refused:
            self._refuse(delivery, f"it already aborted at {self.actor_id}")
            return Admission.DIVERTED
        if hold is None:
            if ticket is not None and ticket.joins:
                self._lock(ticket)
            return Admission.RUN
        if ticket is not None and ticket.txid == hold.txid:
            if hold.prepared:
                self._refuse(delivery, f"{self.actor_id} was called after the commit began")
                return Admission.DIVERTED
            return Admission.RUN
        if ticket is not None and ticket.joins and ticket.dies(hold):
            self._refuse(delivery, f"{self.actor_id} is locked by older transaction {hold.txid}")
            return Admission.DIVERTED
        if self.tx_blocked is None:
            self.tx_blocked = deque()
        self.tx_blocked.append(delivery)
        if ticket is not None and ticket.joins:
            loop = asyncio.get_running_loop()
            settings = self.silo.options.transactions
            loop.call_later(settings.lock_timeout, self._lock_wait_over, delivery)
            if ticket.wounds(hold):
                # Wound-wait: an older transaction that holds locks takes the lock from a
                # younger holder still at work (which aborts) rather than wait on it, so none
                # deadlock. After a short grace: the younger one is often about to commit.
                loop.call_later(settings.wound_after, self._wound_for, delivery, hold.txid)
        return Admission.DIVERTED

    def _wound_for(self, delivery: Delivery, txid: str) -> None:
        hold, blocked = self.tx, self.tx_blocked
        if hold is None or hold.txid != txid or hold.prepared or not blocked:
            return  # the holder ended or is committing: the waiting call goes in soon anyway
        if delivery not in blocked:
            return
        settings = self.silo.options.transactions
        if not self.is_idle_of_turns():  # the holder's turn must end before it can abort here
            asyncio.get_running_loop().call_later(
                settings.wound_after, self._wound_for, delivery, txid
            )
            return
        get_logger().debug("transaction_wounded", actor=str(self.actor_id), txid=txid)
        self._doom(txid)  # the oldest waiting transaction gets the lock next

    def _lock(self, ticket: TxTicket) -> None:
        lease = self.silo.options.transactions.lease
        self.tx = TxHold(ticket.txid, ticket.start, self.silo.loop_time() + lease)
        self.silo.lock_taken(self)

    def _refuse(self, delivery: Delivery, why: str) -> None:
        assert delivery.tx is not None
        self.silo.reply_error(
            delivery.request,
            TransactionAbortedError(f"transaction {delivery.tx.txid} aborted: {why}"),
            self._where(delivery.method),
        )

    def _lock_wait_over(self, delivery: Delivery) -> None:
        blocked = self.tx_blocked
        if blocked is None or delivery not in blocked:
            return
        blocked.remove(delivery)
        holder = self.tx.txid if self.tx is not None else "another transaction"
        lock_timeout = self.silo.options.transactions.lock_timeout
        self._refuse(delivery, f"{self.actor_id} stayed locked by {holder} over {lock_timeout:g} s")

    def _release(self) -> None:
        self.tx = None
        self.silo.locked.discard(self)
        blocked, self.tx_blocked = self.tx_blocked, None
        if not blocked:
            self.pump()
            return
        now = self.silo.loop_time()
        # The oldest waiting transaction first (it would wound a younger one anyway), then
        # the plain calls in arrival order.
        ordered = sorted(blocked, key=lambda d: d.tx.start if d.tx and d.tx.joins else _PLAIN)
        for delivery in ordered:
            if delivery.expires_at > now:
                self.enqueue(delivery)
        self.pump()

    def _doom(self, txid: str) -> None:
        """Abort ``txid`` here: roll its changes back and let the waiting calls in."""
        if self.tx is None or self.tx.txid != txid:
            return
        if self.cls.__actor_state_type__ is not None and self.instance is not None:
            self._rollback()
        self.tx_refused = txid
        self._release()

    async def _abandon(self, ticket: TxTicket, transaction: TransactionContext) -> None:
        # A transactional call that raises aborts its transaction here; the one that started
        # it aborts every participant (others learn at prepare time).
        self._doom(ticket.txid)
        if ticket.coordinates:
            await self.silo.coordinator.abort(ticket.txid, transaction.participants)

    def tx_expired(self) -> None:
        """The lease or the decision timeout ran out (called by ``Silo.sweep_locks``)."""
        hold = self.tx
        if hold is None:
            return
        txid = hold.txid
        get_logger().warning("transaction_lock_expired", actor=str(self.actor_id), txid=txid)
        prepared = hold.prepared
        self._doom(txid)
        if prepared:
            # The outcome is unknown here: reload from storage, which holds the decision.
            self.begin_deactivation(DeactivationReason.INCONSISTENT_STATE)

    def tx_prepare(self, txid: str) -> tuple[bytes | None, str | None]:
        """Phase one: this participant's new state (None if unchanged) and its ETag."""
        hold = self.tx
        if hold is None or hold.txid != txid or self.state is not ActivationState.VALID:
            raise TransactionAbortedError(
                f"{self.actor_id} no longer holds transaction {txid} (it aborted there: an "
                "error, an older transaction took the lock, the lock expired, or the actor "
                "was deactivated)"
            )
        if not hold.prepared:
            data = None
            if self.cls.__actor_state_type__ is not None and self.instance is not None:
                try:
                    data = encode_state(self.instance.state)
                except SerializationError as exc:
                    self._doom(txid)
                    raise SerializationError(f"state of {self.actor_id}: {exc}") from None
            hold.data = None if data == self._committed else data
            hold.prepared = True
            decision_timeout = self.silo.options.transactions.decision_timeout
            hold.expires_at = self.silo.loop_time() + decision_timeout
        return hold.data, self._etag

    def tx_commit(self, txid: str, etag: str | None) -> None:
        hold = self.tx
        if hold is None or hold.txid != txid or not hold.prepared:
            return
        if hold.data is not None and etag is not None:
            self._committed, self._etag = hold.data, etag
        self._release()

    def tx_abort(self, txid: str, reload: bool) -> None:
        if self.tx is None or self.tx.txid != txid:
            return
        self._doom(txid)
        if reload:
            self.begin_deactivation(DeactivationReason.INCONSISTENT_STATE)

    def is_idle_of_turns(self) -> bool:
        return not (self.exclusive or self.readers or self.interleaved)

    async def _wait_idle(self) -> None:
        if self.is_idle_of_turns():
            return
        self._idle_waiter = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(
                asyncio.shield(self._idle_waiter), self.silo.options.deactivation_timeout
            )
        except asyncio.TimeoutError:
            # A turn that never ends must not hold a shutdown or handover hostage.
            get_logger().warning(
                "deactivation_timeout", actor=str(self.actor_id), silo=self.silo.name
            )

    def _where(self, method: ActorMethod) -> str:
        return f"{self.actor_id}.{method.name} on {self.silo.name}"

    # -- state -------------------------------------------------------------------------------

    async def _load_state(self) -> Any:
        state_type = self.cls.__actor_state_type__
        if state_type is None:
            return None
        record = await self.silo.storage.read(self.actor_id)
        self._etag = record.etag
        if record.data is None:
            state = state_type()
            self._committed = encode_state(state)
            return state
        self._committed = record.data
        return decode_state(record.data, state_type, str(self.actor_id))

    def _changed_state(self) -> bytes | None:
        """The encoded state if it differs from the last committed one, else None."""
        assert self.instance is not None
        try:
            data = encode_state(self.instance.state)
        except SerializationError as exc:
            raise SerializationError(f"state of {self.actor_id}: {exc}") from None
        return None if data == self._committed else data

    async def _commit(self) -> None:
        while self._writing:  # (encode once the slot is free: see _run_turn)
            await self._write_finished()
        data = self._changed_state()
        if data is not None:
            await self._write(data)

    async def _write(self, data: bytes) -> None:
        """Write ``data``; the write slot must be free, as the caller checked just before."""
        self._start_write(data)
        try:
            self._etag = await self.silo.storage.write(self.actor_id, data, self._etag)
            self._committed = data
        finally:
            self._end_write()

    # Interleaved turns may commit at the same time; each write must start from the ETag the
    # previous one left, so writes take turns. A flag, and a future only while someone waits,
    # rather than a Lock per activation: it costs nothing while the activation is idle.

    def _write_finished(self) -> asyncio.Future[None]:
        if self._write_waiters is None:
            self._write_waiters = asyncio.get_running_loop().create_future()
        return asyncio.shield(self._write_waiters)

    def _start_write(self, data: bytes) -> None:
        assert not self._writing
        self._writing = True
        self._in_flight = data

    def _end_write(self) -> None:
        self._writing = False
        self._in_flight = None
        waiters, self._write_waiters = self._write_waiters, None
        if waiters is not None:
            waiters.set_result(None)

    def _rollback(self) -> None:
        """Put back the newest state that is stored or on its way: the last committed one, or
        the one a write under way carries (its turn has been told nothing yet, and will be
        told it succeeded; going back past it would lose that turn's changes from memory)."""
        # The state is shared by every turn running on the activation: a changing turn that
        # overlapped this one may have lost its changes too (see _run_turn).
        self._rollbacks += 1
        assert self.instance is not None
        state_type = self.cls.__actor_state_type__
        newest = self._committed if self._in_flight is None else self._in_flight
        if newest is None:
            self.instance.state = state_type()
        else:
            self.instance.state = decode_state(newest, state_type, str(self.actor_id))

    # -- ActorRuntime ------------------------------------------------------------------------

    def ref(self, actor_type: type[Actor[Any]] | str, key: ActorKey) -> ActorRef:
        type_name = actor_type if isinstance(actor_type, str) else actor_type.__actor_options__.name
        return ActorRef(ActorId(type_name, key), self.silo.caller)

    def deactivate_on_idle(self) -> None:
        self.deactivate_requested = True

    async def save(self) -> None:
        if self.tx is not None:
            return  # a transaction holds the actor: its changes are written when it commits
        if self.cls.__actor_state_type__ is not None:
            await self._commit()

    async def clear_state(self) -> None:
        state_type = self.cls.__actor_state_type__
        if state_type is None or self.instance is None:
            return
        if self.tx is not None:
            raise InvalidCallError(
                f"{self.actor_id}: clear_state() inside a transaction; set the state to its "
                "empty value instead, and the transaction commits it"
            )
        while self._writing:
            await self._write_finished()
        self._writing = True
        try:
            self._etag = await self.silo.storage.clear(self.actor_id, self._etag)
            self.instance.state = state_type()
            self._committed = encode_state(self.instance.state)
        finally:
            self._end_write()
