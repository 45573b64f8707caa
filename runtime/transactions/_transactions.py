"""Multi-actor transactions: strict two-phase locking per actor, committed in one storage write.

A transaction has an id and a start time. Every ``@transactional`` call made inside it carries
both; the actor it reaches is locked for the transaction until it commits or aborts, and its
state changes stay in memory (no per-turn commit) until then. Conflicts follow wound-wait: a
younger transaction waits (at most ``lock_timeout``) for an older holder; an older one that
already holds locks takes the lock from a younger holder still at work, which aborts. A call
made from inside a running transactional turn cannot be wounded until the turn ends, so it
aborts instead of waiting for an older holder (wait-die). So transactions never deadlock. The
retry helper keeps a transaction's age across attempts: an aborted one only gets older, and
eventually wins.

Commit (see ``Coordinator.commit``): every participant is asked to *prepare* (it encodes its new
state and keeps its lock), then the coordinator writes every changed state in one atomic
``write_many`` with each participant's ETag: that single storage transaction is the decision
record. Only then are the participants told to *commit* (adopt the new state and ETag, unlock).
A participant that hears nothing after preparing does not guess: it drops its in-memory state
and reloads from storage, which holds exactly the decided outcome. A crash of any silo or of the
client at any point thus leaves every transfer applied everywhere or nowhere.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import msgpack

from raygrain.actors import ActorId, TransactionAbortedError
from raygrain.storage import StateWrite

if TYPE_CHECKING:
    from raygrain.runtime.kernel import Silo
    from raygrain.storage import StorageProvider

__all__ = [
    "TX_ABORT",
    "TX_COMMIT",
    "TX_COORDINATE",
    "TX_PREPARE",
    "Coordinator",
    "TransactionContext",
    "TransactionSettings",
    "TxTicket",
    "current_transaction",
]

# System messages of the commit protocol: delivered to the silo, never to a user method.
TX_PREPARE = "__tx_prepare__"
TX_COMMIT = "__tx_commit__"
TX_ABORT = "__tx_abort__"
TX_COORDINATE = "__tx_coordinate__"
SYSTEM_METHODS = frozenset({TX_PREPARE, TX_COMMIT, TX_ABORT, TX_COORDINATE})

_ids = itertools.count(1)
_process_tag = f"{os.getpid():x}.{os.urandom(3).hex()}"


def _new_txid() -> str:
    """Unique across processes: this process's tag and a counter."""
    return f"{_process_tag}.{next(_ids)}"


@dataclass(frozen=True, slots=True)
class TransactionSettings:
    """How long locks and decisions may take; every duration is in seconds."""

    lock_timeout: float = 5.0  # longest an older transaction's call waits for a lock
    lease: float = 30.0  # longest a participant stays locked before its transaction prepares
    decision_timeout: float = 10.0  # longest a prepared participant waits for the outcome
    wound_after: float = 0.005  # grace before an older transaction aborts a younger holder


@dataclass(slots=True)
class TransactionContext:
    """A running transaction as its caller sees it: who has joined so far."""

    txid: str
    start: float
    participants: set[ActorId] = field(default_factory=set)
    in_turn: bool = False  # a participant's turn, which holds that participant's lock

    @classmethod
    def new(cls, start: float | None = None) -> TransactionContext:
        """A new transaction; ``start`` (its age, for wait-die) defaults to now."""
        return cls(_new_txid(), time.time() if start is None else start, set())

    @classmethod
    def joined(cls, ticket: TxTicket, first: ActorId) -> TransactionContext:
        return cls(ticket.txid, ticket.start, {first}, in_turn=True)

    def header(self) -> bytes:
        """What a call made in this transaction carries: its id, its age, whether it holds
        any lock yet, and whether it comes from a running turn (see ``TxTicket.dies``)."""
        header = [self.txid, self.start, bool(self.participants), self.in_turn]
        return msgpack.packb(header)  # type: ignore[no-any-return]


# The transaction the current task (a client block or an actor's turn) runs in, if any.
current_transaction: ContextVar[TransactionContext | None] = ContextVar(
    "raygrain_transaction", default=None
)


class LockHolder(Protocol):
    txid: str
    start: float
    prepared: bool


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

    @classmethod
    def from_header(cls, header: bytes, joins: bool) -> TxTicket:
        txid, start, holds_locks, in_turn = msgpack.unpackb(header)
        return cls(str(txid), float(start), joins, False, bool(holds_locks), bool(in_turn))

    @classmethod
    def started_here(cls) -> TxTicket:
        return cls(_new_txid(), time.time(), True, coordinates=True)

    def wounds(self, holder: LockHolder) -> bool:
        """Wound-wait: take the lock from its holder (which aborts) rather than wait, when
        waiting could close a cycle: this transaction is older than the holder and holds
        locks itself, and the holder may still wait for others (a prepared one requests
        nothing more). A transaction holding no lock yet waits: it closes no cycle."""
        older = (self.start, self.txid) < (holder.start, holder.txid)
        return older and self.holds_locks and not holder.prepared

    def dies(self, holder: LockHolder) -> bool:
        """Abort rather than wait for an older holder when this call comes from a running
        turn holding a lock: an older transaction could not take that lock until the turn
        ends, and the turn would be waiting for it (wait-die, for calls made from turns)."""
        younger = (self.start, self.txid) > (holder.start, holder.txid)
        return younger and self.in_turn and self.holds_locks and not holder.prepared


class Coordinator:
    """Runs the commit protocol for one silo (or the client's proxy for it)."""

    def __init__(self, silo: Silo, storage: StorageProvider, timeout: float) -> None:
        self._silo = silo
        self._storage = storage
        self._timeout = timeout

    async def commit(self, txid: str, participants: Iterable[ActorId]) -> None:
        """Prepare every participant, write their states in one storage transaction, then
        tell them; raises ``TransactionAbortedError`` (after aborting them) if any step fails
        before the write."""
        order = sorted(set(participants), key=str)
        prepared = await self._to_all(order, TX_PREPARE, txid)
        failed = [(p, r) for p, r in zip(order, prepared, strict=True) if isinstance(r, Exception)]
        if failed:
            await self.abort(txid, order)
            who, why = failed[0]
            raise TransactionAbortedError(
                f"transaction {txid} aborted: participant {who} could not prepare: {why}"
            )
        write_many = getattr(self._storage, "write_many", None)
        if write_many is None:
            await self.abort(txid, order)
            raise TransactionAbortedError(
                f"transaction {txid} aborted: the storage provider "
                f"{type(self._storage).__name__} has no atomic multi-record write (write_many)"
            )
        writes = []
        for participant, answer in zip(order, prepared, strict=True):
            data, etag = answer  # type: ignore[misc]  # every failure was handled above
            if data is not None:
                writes.append(StateWrite(participant, data, etag))
        try:
            etags = await write_many(writes) if writes else []
        except Exception as exc:
            # The outcome of a failed write is not always known (a lost connection): the
            # participants reload from storage, which holds whatever was decided.
            await self.abort(txid, order, reload=True)
            raise TransactionAbortedError(
                f"transaction {txid} aborted: its commit write failed: {exc}"
            ) from None
        new_etags = {w.actor_id: etag for w, etag in zip(writes, etags, strict=True)}
        # Committed. Participants learn it without the caller waiting: until they do, they
        # stay locked, so nobody reads around the outcome; one that never hears of it reloads
        # from storage when its decision timeout runs out.
        for participant in order:
            sent = self._send(participant, TX_COMMIT, txid, new_etags.get(participant))
            if isinstance(sent, asyncio.Future):
                sent.add_done_callback(_retrieve)

    async def abort(self, txid: str, participants: Iterable[ActorId], reload: bool = False) -> None:
        await self._to_all(participants, TX_ABORT, txid, reload)

    async def _to_all(
        self, participants: Iterable[ActorId], method: str, *args: Any
    ) -> list[Any | Exception]:
        """Send ``method`` to every participant at once; their results or errors, in order."""
        sent = [self._send(p, method, *args) for p in participants]
        results: list[Any | Exception] = []
        for outcome in sent:
            try:
                if isinstance(outcome, asyncio.Future):
                    results.append(self._silo.caller.result_of(await outcome))
                else:
                    results.append(outcome)
            except Exception as exc:
                results.append(exc)
        return results

    def _send(self, target: ActorId, method: str, *args: Any) -> Any:
        """The result at once for a participant hosted here (no message needed), else a future
        of the response; an error of the local handler is returned, not raised."""
        silo = self._silo
        try:
            if silo.hosts(target):
                return silo.participant_message(target, method, list(args))
            return silo.caller.send_system(target, method, list(args), self._timeout)
        except Exception as exc:
            return exc


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # a lost commit message is handled by the participant's timeout


def encode_participants(participants: Iterable[ActorId]) -> list[list[Any]]:
    return [[p.type_name, p.key] for p in participants]


def decode_participants(items: Iterable[Any]) -> list[ActorId]:
    return [ActorId(t, k) for t, k in items]
