"""Transactions as a silo capability: how they plug into the kernel's extension surface.

- ``accept``: a call made inside a transaction, or to a ``@transactional`` method, gets a
  ``TxTicket`` that governs its admission and its turn (see ``_locks``).
- System messages: the commit protocol's prepare, commit and abort, and a client's request to
  coordinate its block's commit.
- Background work: one sweeper ends the holds whose lease or decision timeout ran out.
- ``TransactionFilter``: every call made in a transaction carries its header, and the actors
  that joined during the call come back in the response.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import Any

from raygrain.actors import ActorId, RaygrainError, TransactionAbortedError, encode
from raygrain.runtime.kernel import Activation, Delivery, Extension, Request, Response, Silo
from raygrain.runtime.transactions import _locks
from raygrain.runtime.transactions._context import (
    TX_ABORT,
    TX_COMMIT,
    TX_COORDINATE,
    TX_PREPARE,
    TransactionContext,
    TransactionSettings,
    current_transaction,
    decode_participants,
)
from raygrain.runtime.transactions._coordinator import Coordinator

__all__ = ["TransactionFilter", "Transactions"]

_ABORTED_KEPT = 4096  # (transaction, actor) pairs remembered per silo: a few seconds' aborts


class Transactions(Extension):
    """Multi-actor transactions on one silo."""

    def __init__(self) -> None:
        self.settings = TransactionSettings()
        self.locked: set[Activation] = set()  # activations a transaction holds
        self.warned: set[tuple[str, str]] = set()  # (type, method): plain changes logged
        # Where transactions aborted here lately (rolled back, or their activation went): a
        # transaction must not lock such an actor afresh, which would commit it without the
        # changes it made there first. Kept per silo, not per activation, so a reactivation
        # here remembers too; the oldest entries go first.
        self._aborted: OrderedDict[tuple[str, ActorId], str] = OrderedDict()  # -> why
        self._sweeper: asyncio.Task[None] | None = None
        self._silo: Silo | None = None
        self.coordinator: Coordinator

    def attach(self, silo: Silo) -> None:
        self._silo = silo
        silo.provide_service(_locks.SERVICE, lambda _: self)
        self.settings = silo.options.setting(TransactionSettings, TransactionSettings())
        self.coordinator = Coordinator(silo, self, silo.storage, silo.options.calls.default_timeout)
        for name in (TX_PREPARE, TX_COMMIT, TX_ABORT):
            silo.register_system_method(name, self._participant_request)
        silo.register_system_method(TX_COORDINATE, self._coordinate_request)

    async def stop(self, silo: Silo) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()

    def accept(self, silo: Silo, delivery: Delivery) -> None:
        request = delivery.request
        if delivery.method.options.transactional:
            delivery.ticket = (
                _locks.TxTicket.started_here()
                if request.transaction is None
                else _locks.TxTicket.from_header(request.transaction, joins=True)
            )
        elif request.transaction is not None:
            # Not a transactional method: it joins nothing, but it may run inside a
            # transaction that already holds the actor (and then commits with it).
            delivery.ticket = _locks.TxTicket.from_header(request.transaction, joins=False)

    def call_filter(self) -> TransactionFilter:
        return TransactionFilter()

    # -- the commit protocol's messages -------------------------------------------------------

    def _participant_request(self, request: Request, args: list[Any]) -> None:
        silo = self._silo
        assert silo is not None
        if not silo.owns(request):
            return  # passed on to the owner
        where = f"{request.method} {request.target} on {silo.name}"
        try:
            result = self.participant_message(request.target, request.method, args)
        except RaygrainError as exc:
            silo.reply_error(request, exc, where)
            return
        silo.reply(request, True, b"" if result is None else encode(result))

    def participant_message(self, target: ActorId, method: str, args: list[Any]) -> Any:
        """Apply a prepare, commit or abort to ``target``'s activation here; the coordinator
        calls this directly for the participants it hosts."""
        silo = self._silo
        assert silo is not None
        activation = silo.activations.get(target)
        txid = str(args[0])
        if method == TX_PREPARE:
            if activation is None:
                raise TransactionAbortedError(
                    f"{target} is no longer active here: its changes in transaction {txid} are gone"
                )
            return list(_locks.prepare(activation, txid))
        if activation is not None:
            if method == TX_COMMIT:
                _locks.commit(activation, txid, args[1])
            else:
                _locks.abort(activation, txid, bool(args[1]))
        return None

    def _coordinate_request(self, request: Request, args: list[Any]) -> None:
        # The client's transaction block ends: commit it from here (a silo has storage).
        silo = self._silo
        assert silo is not None
        silo.spawn(self._coordinate(request, str(args[0]), decode_participants(args[1])))

    async def _coordinate(self, request: Request, txid: str, participants: list[ActorId]) -> None:
        silo = self._silo
        assert silo is not None
        try:
            await self.coordinator.commit(txid, participants)
        except RaygrainError as exc:
            silo.reply_error(request, exc, f"commit of transaction {txid} on {silo.name}")
            return
        silo.reply(request, True, b"")

    def aborted_at(self, txid: str, actor_id: ActorId, why: str) -> None:
        self._aborted[(txid, actor_id)] = why
        if len(self._aborted) > _ABORTED_KEPT:
            self._aborted.popitem(last=False)

    def refused(self, txid: str, actor_id: ActorId) -> str | None:
        """Why ``txid`` aborted at ``actor_id`` here; None if it did not (as far as this silo
        remembers)."""
        return self._aborted.get((txid, actor_id))

    # -- lock timeouts -------------------------------------------------------------------------

    def lock_taken(self, activation: Activation) -> None:
        self.locked.add(activation)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self.sweep_locks())

    async def sweep_locks(self) -> None:
        """End the transactions whose lease or decision timeout ran out. One sweep for all
        locks rather than a timer per lock: timers cost more than the lock itself."""
        silo = self._silo
        assert silo is not None
        settings = self.settings
        period = min(0.25, settings.lease / 4, settings.decision_timeout / 4)
        while not silo.closed:
            await asyncio.sleep(period)
            now = silo.loop_time()
            for activation in [a for a in self.locked if _expired(a, now)]:
                _locks.expired(activation)


def _expired(activation: Activation, now: float) -> bool:
    guard = activation.guard
    return isinstance(guard, _locks.TxHold) and guard.expires_at <= now


class TransactionFilter:
    """A call made inside a transaction carries it (the silo decides if the call joins); the
    actors that joined during the call are added to the caller's transaction."""

    def outgoing(self, request: Request) -> Callable[[Response | None], None] | None:
        transaction = current_transaction.get()
        if transaction is None:
            return None
        transaction.call_started()
        request.transaction = transaction.header(request.target)
        return partial(_call_ended, transaction, request.target)


def _call_ended(
    transaction: TransactionContext, target: ActorId, response: Response | None
) -> None:
    if response is None:
        transaction.call_lost(target)
    else:
        transaction.call_ended(response.joined)
