"""The lock a transaction holds on an activation, and the ticket a transactional call carries.

``TxTicket`` is the kernel ``Ticket`` of a call made inside a transaction: it decides the call's
admission (lock the actor, join the holder's transaction, wait, or abort under wound-wait /
wait-die) and gives its turn a ``TxScope`` (the turn runs in the transaction, its changes stay
in memory until the commit). ``TxHold`` is the kernel ``Guard`` set on an activation while a
transaction holds it: other calls are set aside until it ends. The commit protocol's phases
(prepare, commit, abort) and the timeouts act on the hold here.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import msgpack

from raygrain.actors import (
    ActorId,
    DeactivationReason,
    InvalidCallError,
    SerializationError,
    TransactionAbortedError,
)
from raygrain.runtime.kernel import Activation, Admission, Delivery, get_logger
from raygrain.runtime.transactions._context import (
    TransactionContext,
    TransactionSettings,
    current_transaction,
    new_txid,
)
from raygrain.runtime.transactions._coordinator import Coordinator

__all__ = ["TxHold", "TxScope", "TxTicket"]

SERVICE = "transactions"  # the name Transactions offers itself under (Silo.provide_service)
_PLAIN = float("inf")  # plain calls sort after every transaction waiting for a lock
# Why a transaction's hold is gone, when this silo does not remember (another silo's
# activation, or long ago).
_GONE = (
    "it aborted there (an error, an older transaction took the lock, the lock expired, or the "
    "actor was deactivated)"
)


class TxHold:
    """The transaction holding an activation's lock. Its changes live in the instance's state;
    the state slot still holds the state from before it, to roll back to."""

    __slots__ = ("aborting", "blocked", "data", "expires_at", "prepared", "start", "txid")
    owns_changes = True  # the transaction writes the changes when it commits (Guard)

    def __init__(self, txid: str, start: float, expires_at: float) -> None:
        self.txid = txid
        self.start = start
        self.expires_at = expires_at  # loop time: the lease, then the decision timeout
        self.prepared = False
        # Why it aborted while a turn of it was running: refused from now on, rolled back once
        # the turn ended (a rollback under a running turn would let it change the state again).
        self.aborting: str | None = None
        self.data: bytes | None = None  # the prepared new state (None: unchanged)
        self.blocked: deque[Delivery] | None = None  # calls waiting for it to end

    def admit(self, activation: Activation, delivery: Delivery) -> Admission:
        """A call outside any transaction waits until the holder ends."""
        self.set_aside(delivery)
        return Admission.DIVERTED

    def set_aside(self, delivery: Delivery) -> None:
        if self.blocked is None:
            self.blocked = deque()
        self.blocked.append(delivery)

    def drain(self, activation: Activation) -> list[Delivery]:
        """The activation goes: its uncommitted changes go too; a prepare for the transaction
        now finds no activation. Returns the calls set aside, to be routed again."""
        owner = _owner(activation)
        owner.locked.discard(activation)
        owner.aborted_at(self.txid, activation.actor_id, "the actor was deactivated")
        blocked, self.blocked = self.blocked, None
        return list(blocked or ())


@dataclass(frozen=True, slots=True)
class TxTicket:
    """What a delivered call knows of its transaction. ``joins``: the method is
    ``@transactional`` (it locks the actor); ``coordinates``: it started the transaction
    itself, so its turn commits it."""

    txid: str
    start: float
    joins: bool
    coordinates: bool = False
    holds_locks: bool = False
    in_turn: bool = False
    # The caller's transaction joined this actor already: it must still hold it. A hold lost
    # since (rolled back by an error, a wound, an expired lease, the actor's deactivation)
    # took the transaction's changes there with it, so the call aborts rather than lock the
    # actor afresh and commit without them.
    rejoins: bool = False

    @classmethod
    def from_header(cls, header: bytes, joins: bool) -> TxTicket:
        # (The last field since 2026-12-04: a peer from before sends four, and then cannot
        # say that it joined this actor already.)
        txid, start, holds_locks, in_turn, *rest = msgpack.unpackb(header)
        rejoins = bool(rest[0]) if rest else False
        return cls(str(txid), float(start), joins, False, bool(holds_locks), bool(in_turn), rejoins)

    @classmethod
    def started_here(cls) -> TxTicket:
        return cls(new_txid(), time.time(), True, coordinates=True)

    def wounds(self, holder: TxHold) -> bool:
        """Wound-wait: take the lock from its holder (which aborts) rather than wait, when
        waiting could close a cycle: this transaction is older than the holder and holds
        locks itself, and the holder may still wait for others (a prepared one requests
        nothing more). A transaction holding no lock yet waits: it closes no cycle."""
        older = (self.start, self.txid) < (holder.start, holder.txid)
        return older and self.holds_locks and not holder.prepared

    def dies(self, holder: TxHold) -> bool:
        """Abort rather than wait for an older holder when this call comes from a running
        turn holding a lock: an older transaction could not take that lock until the turn
        ends, and the turn would be waiting for it (wait-die, for calls made from turns)."""
        younger = (self.start, self.txid) > (holder.start, holder.txid)
        return younger and self.in_turn and self.holds_locks and not holder.prepared

    # -- the kernel's Ticket ------------------------------------------------------------------

    def admit(self, activation: Activation, delivery: Delivery) -> Admission:
        """Whether the call may run now as far as transactions go (``RUN``), must wait for the
        running turns (``WAIT``: it locks when its turn comes), or was set aside until the
        holder ends, or refused (``DIVERTED``)."""
        hold = _hold(activation)
        refused = _owner(activation).refused(self.txid, activation.actor_id)
        if self.rejoins and (hold is None or hold.txid != self.txid):
            why = refused or _GONE
            _refuse(activation, delivery, f"its changes at {activation.actor_id} are gone: {why}")
            return Admission.DIVERTED
        if self.joins and refused is not None:
            _refuse(activation, delivery, f"it already aborted at {activation.actor_id}: {refused}")
            return Admission.DIVERTED
        if hold is None and not activation.is_idle_of_turns():
            return Admission.WAIT
        if hold is None:
            if self.joins:
                _lock(activation, self)
            elif not delivery.method.options.read_only and not _plain_change(activation, delivery):
                return Admission.DIVERTED
            return Admission.RUN
        if self.txid == hold.txid:
            if hold.aborting is not None:
                _refuse(
                    activation, delivery, f"it aborted at {activation.actor_id}: {hold.aborting}"
                )
                return Admission.DIVERTED
            if hold.prepared:
                _refuse(
                    activation, delivery, f"{activation.actor_id} was called after the commit began"
                )
                return Admission.DIVERTED
            return Admission.RUN
        if self.joins and self.dies(hold):
            why = f"{activation.actor_id} is locked by older transaction {hold.txid}"
            _refuse(activation, delivery, why)
            return Admission.DIVERTED
        hold.set_aside(delivery)
        if self.joins:
            loop = asyncio.get_running_loop()
            settings = _owner(activation).settings
            loop.call_later(settings.lock_timeout, _lock_wait_over, activation, delivery)
            if self.wounds(hold):
                # Wound-wait: an older transaction that holds locks takes the lock from a
                # younger holder still at work (which aborts) rather than wait on it, so none
                # deadlock. After a short grace: the younger one is often about to commit.
                loop.call_later(settings.wound_after, _wound_for, activation, delivery, hold.txid)
        return Admission.DIVERTED

    def begin(self, activation: Activation, delivery: Delivery) -> TxScope | None:
        """A scope for the turn when it runs inside the transaction holding the actor (a
        transactional call, or a plain one made in that same transaction); else None (a
        plain call of another transaction, on an actor nobody holds: an ordinary turn)."""
        hold = _hold(activation)
        if hold is None or hold.txid != self.txid:
            return None
        transaction = TransactionContext.joined(self.txid, self.start, activation.actor_id)
        return TxScope(self, activation, transaction)


class TxScope:
    """A turn inside a transaction (the kernel's ``TurnScope``)."""

    __slots__ = ("activation", "ticket", "transaction")
    defers_commit = True  # its changes commit with the transaction

    def __init__(
        self, ticket: TxTicket, activation: Activation, transaction: TransactionContext
    ) -> None:
        self.ticket = ticket
        self.activation = activation
        self.transaction = transaction

    def enter(self) -> None:
        current_transaction.set(self.transaction)

    async def succeeded(self) -> None:
        # Calls the turn made in the transaction and did not await join it before it is
        # reported (or committed), or fail at once if made after.
        await self.transaction.end()
        if self.transaction.doomed is not None:  # (the turn then fails: see failed)
            raise TransactionAbortedError(
                f"transaction {self.ticket.txid} aborted: {self.transaction.doomed}"
            )
        if self.ticket.coordinates:
            coordinator = _owner(self.activation).coordinator
            await coordinator.commit(self.ticket.txid, self.transaction.participants)

    async def failed(self, error: Exception) -> None:
        # A transactional call that raises aborts its transaction here; the one that started
        # it aborts every participant (others learn at prepare time).
        await self.transaction.end()
        doom(self.activation, self.ticket.txid, f"a call there raised {_described(error)}")
        coordinator = _owner(self.activation).coordinator
        if self.ticket.coordinates:
            everyone = self.transaction.participants | self.transaction.uncertain
            await coordinator.abort(self.ticket.txid, everyone)
        elif self.transaction.uncertain:  # (its caller does not know of them)
            await coordinator.abort(self.ticket.txid, self.transaction.uncertain)

    def joined(self) -> tuple[ActorId, ...]:
        return () if self.ticket.coordinates else tuple(self.transaction.participants)


# -- the hold's life ---------------------------------------------------------------------------


class _Owner(Protocol):
    """What the locks need of the silo's transactions extension (runtime/transactions/
    _extension.py), named here so that this module does not import the one that imports it."""

    settings: TransactionSettings
    coordinator: Coordinator
    locked: set[Activation]
    warned: set[tuple[str, str]]

    def lock_taken(self, activation: Activation) -> None: ...

    def aborted_at(self, txid: str, actor_id: ActorId, why: str) -> None: ...

    def refused(self, txid: str, actor_id: ActorId) -> str | None: ...


def _owner(activation: Activation) -> _Owner:
    # The extension offers itself as a silo service (see Transactions.attach).
    owner: _Owner = activation.service(SERVICE)
    return owner


def _hold(activation: Activation) -> TxHold | None:
    guard = activation.guard
    return guard if isinstance(guard, TxHold) else None


def _lock(activation: Activation, ticket: TxTicket) -> None:
    owner = _owner(activation)
    expires_at = activation.silo.loop_time() + owner.settings.lease
    activation.guard = TxHold(ticket.txid, ticket.start, expires_at)
    owner.lock_taken(activation)


def _plain_change(activation: Activation, delivery: Delivery) -> bool:
    """A changing method that is not ``@transactional`` called in a transaction that does not
    hold the actor: it commits on its own, whatever the transaction does. Warn (once per
    method and silo), or refuse it (``refuse_plain_changes``); False if refused."""
    owner = _owner(activation)
    actor_id, method = activation.actor_id, delivery.method.name
    txid = delivery.ticket.txid if isinstance(delivery.ticket, TxTicket) else "?"
    if owner.settings.refuse_plain_changes:
        activation.silo.reply_error(
            delivery.request,
            InvalidCallError(
                f"{actor_id.type_name}.{method} is not @transactional but changes state: "
                f"called in transaction {txid}, its change would commit on its own, whatever "
                "the transaction does (refuse_plain_changes is set); make it @transactional "
                "or call it outside the transaction"
            ),
            f"{actor_id}.{method} on {activation.silo.name}",
        )
        return False
    if (actor_id.type_name, method) not in owner.warned:
        owner.warned.add((actor_id.type_name, method))
        get_logger().warning(
            "plain_change_in_transaction",
            actor=str(actor_id),
            method=method,
            txid=txid,
            detail="not @transactional: its change commits on its own, even if the "
            "transaction aborts (TransactionSettings.refuse_plain_changes refuses such calls)",
        )
    return True


def _refuse(activation: Activation, delivery: Delivery, why: str) -> None:
    txid = delivery.ticket.txid if isinstance(delivery.ticket, TxTicket) else "?"
    activation.silo.reply_error(
        delivery.request,
        TransactionAbortedError(f"transaction {txid} aborted: {why}"),
        f"{activation.actor_id}.{delivery.method.name} on {activation.silo.name}",
    )


def _lock_wait_over(activation: Activation, delivery: Delivery) -> None:
    hold = _hold(activation)
    blocked = hold.blocked if hold is not None else None
    if blocked is None or delivery not in blocked:
        return
    blocked.remove(delivery)
    holder = hold.txid if hold is not None else "another transaction"
    lock_timeout = _owner(activation).settings.lock_timeout
    _refuse(
        activation,
        delivery,
        f"{activation.actor_id} stayed locked by {holder} over {lock_timeout:g} s",
    )


def _wound_for(activation: Activation, delivery: Delivery, txid: str) -> None:
    hold = _hold(activation)
    if hold is None or hold.txid != txid or hold.prepared or not hold.blocked:
        return  # the holder ended or is committing: the waiting call goes in soon anyway
    if delivery not in hold.blocked:
        return
    if not activation.is_idle_of_turns():  # the holder's turn must end before it can abort here
        wound_after = _owner(activation).settings.wound_after
        asyncio.get_running_loop().call_later(wound_after, _wound_for, activation, delivery, txid)
        return
    get_logger().debug("transaction_wounded", actor=str(activation.actor_id), txid=txid)
    # The oldest waiting transaction gets the lock next.
    doom(activation, txid, "an older transaction took the lock (wound-wait)")


def release(activation: Activation) -> None:
    """The hold ends: let the calls it set aside in, the oldest transaction first."""
    hold = _hold(activation)
    activation.guard = None
    _owner(activation).locked.discard(activation)
    blocked = hold.blocked if hold is not None else None
    if not blocked:
        activation.pump()
        return
    now = activation.silo.loop_time()
    # The oldest waiting transaction first (it would wound a younger one anyway), then
    # the plain calls in arrival order.
    ordered = sorted(blocked, key=_age_of)
    for delivery in ordered:
        if delivery.expires_at > now:
            activation.enqueue(delivery)
    activation.pump()


def _age_of(delivery: Delivery) -> float:
    ticket = delivery.ticket
    return ticket.start if isinstance(ticket, TxTicket) and ticket.joins else _PLAIN


def doom(activation: Activation, txid: str, why: str) -> None:
    """Abort ``txid`` here (``why``: said to its later calls and its prepare): roll its
    changes back and let the waiting calls in."""
    hold = _hold(activation)
    if hold is None or hold.txid != txid:
        return
    activation.rollback()
    _owner(activation).aborted_at(txid, activation.actor_id, why)
    release(activation)


def expired(activation: Activation) -> None:
    """The lease or the decision timeout ran out (see ``Transactions.sweep_locks``)."""
    hold = _hold(activation)
    if hold is None or hold.aborting is not None:
        return
    txid = hold.txid
    get_logger().warning("transaction_lock_expired", actor=str(activation.actor_id), txid=txid)
    settings = _owner(activation).settings
    why = (
        f"it heard no decision within decision_timeout ({settings.decision_timeout:g} s)"
        if hold.prepared
        else f"its lease ran out ({settings.lease:g} s) before it prepared"
    )
    if hold.prepared:
        # The outcome is unknown here: reload from storage, which holds the decision. Begin
        # the deactivation first, so the calls the hold set aside queue for the next
        # activation instead of running on the rolled-back state (and being fenced).
        activation.begin_deactivation(DeactivationReason.INCONSISTENT_STATE)
    _doom_after_turns(activation, txid, why)


def _doom_after_turns(activation: Activation, txid: str, why: str) -> None:
    """``doom``, once no turn of the transaction runs here any more (a turn longer than the
    lease, say): rolled back under it, the turn would go on changing the state, and its
    changes would stay in memory with no transaction to undo them. Until then the hold
    refuses the transaction's calls and its prepare."""
    hold = _hold(activation)
    if hold is None or hold.txid != txid:
        return
    if activation.is_idle_of_turns():
        doom(activation, txid, why)
        return
    hold.aborting = why
    wound_after = _owner(activation).settings.wound_after
    asyncio.get_running_loop().call_later(wound_after, _doom_after_turns, activation, txid, why)


def prepare(activation: Activation, txid: str) -> tuple[bytes | None, str | None]:
    """Phase one: this participant's new state (None if unchanged) and its ETag."""
    from raygrain.runtime.kernel import ActivationState

    hold = _hold(activation)
    if (
        hold is None
        or hold.txid != txid
        or hold.aborting is not None
        or activation.state is not ActivationState.VALID
    ):
        why = (
            hold.aborting
            if hold is not None and hold.txid == txid and hold.aborting is not None
            else _owner(activation).refused(txid, activation.actor_id) or _GONE
        )
        raise TransactionAbortedError(
            f"{activation.actor_id} no longer holds transaction {txid}: {why}"
        )
    slot = activation.slot
    if not hold.prepared:
        data = None
        if slot is not None and activation.instance is not None:
            try:
                data = slot.encode(activation.instance.state)
            except SerializationError as exc:
                doom(activation, txid, f"its state could not be encoded: {exc}")
                raise
        hold.data = None if data == (slot.committed if slot else None) else data
        hold.prepared = True
        decision_timeout = _owner(activation).settings.decision_timeout
        hold.expires_at = activation.silo.loop_time() + decision_timeout
    return hold.data, slot.etag if slot is not None else None


def commit(activation: Activation, txid: str, etag: str | None) -> None:
    hold = _hold(activation)
    if hold is None or hold.txid != txid or not hold.prepared:
        return
    if hold.data is not None and etag is not None and activation.slot is not None:
        activation.slot.adopt(hold.data, etag)
    release(activation)


def abort(activation: Activation, txid: str, reload: bool) -> None:
    hold = _hold(activation)
    if hold is None or hold.txid != txid:
        return
    if reload:  # (first: see expired)
        activation.begin_deactivation(DeactivationReason.INCONSISTENT_STATE)
    _doom_after_turns(activation, txid, "the transaction was aborted")


_CAUSE_CHARS = 300  # of an error's message kept as an abort's cause (4,096 of them a silo)


def _described(error: BaseException) -> str:
    text = str(error)
    if len(text) > _CAUSE_CHARS:
        text = text[:_CAUSE_CHARS] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
