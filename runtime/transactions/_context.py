"""A transaction as callers and turns see it: its id and age, the settings, the context
variable a turn or client block runs in, and the names of the commit protocol's messages."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import msgpack

from raygrain.actors import ActorId, ConfigurationError, InvalidCallError
from raygrain.runtime.kernel import turn_variable

__all__ = [
    "TX_ABORT",
    "TX_COMMIT",
    "TX_COORDINATE",
    "TX_PREPARE",
    "TransactionContext",
    "TransactionSettings",
    "current_transaction",
    "decode_participants",
    "encode_participants",
    "new_txid",
]

# System messages of the commit protocol: delivered to the silo, never to a user method.
TX_PREPARE = "__tx_prepare__"
TX_COMMIT = "__tx_commit__"
TX_ABORT = "__tx_abort__"
TX_COORDINATE = "__tx_coordinate__"

_ids = itertools.count(1)
_process_tag = f"{os.getpid():x}.{os.urandom(3).hex()}"


def new_txid() -> str:
    """Unique across processes: this process's tag and a counter."""
    return f"{_process_tag}.{next(_ids)}"


@dataclass(frozen=True, slots=True)
class TransactionSettings:
    """How long locks and decisions may take (every duration in seconds), and what a call to
    a changing method that is not ``@transactional`` does inside a transaction: its change
    commits on its own, whatever the transaction does, so by default the silo logs a warning
    (``plain_change_in_transaction``, once per method); ``refuse_plain_changes`` makes such
    a call fail with ``InvalidCallError`` instead, before it runs."""

    lock_timeout: float = 5.0  # longest an older transaction's call waits for a lock
    lease: float = 30.0  # longest a participant stays locked before its transaction prepares
    decision_timeout: float = 10.0  # longest a prepared participant waits for the outcome
    wound_after: float = 0.005  # grace before an older transaction aborts a younger holder
    refuse_plain_changes: bool = False

    def __post_init__(self) -> None:
        for label in ("lock_timeout", "lease", "decision_timeout", "wound_after"):
            value = getattr(self, label)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigurationError(
                    f"TransactionSettings.{label} must be a positive number of seconds, "
                    f"got {value!r}"
                )
        if not isinstance(self.refuse_plain_changes, bool):
            raise ConfigurationError(
                "TransactionSettings.refuse_plain_changes must be a bool, "
                f"got {self.refuse_plain_changes!r}"
            )


@dataclass(slots=True)
class TransactionContext:
    """A running transaction as its caller sees it: who has joined so far."""

    txid: str
    start: float
    participants: set[ActorId] = field(default_factory=set)
    in_turn: bool = False  # a participant's turn, which holds that participant's lock
    # Calls made in the transaction that have not answered yet (a task the block or turn
    # started and did not await, say): the commit waits for them, so none is acknowledged
    # outside it. Once it ended, a call made in it fails at once.
    running: int = 0
    ended: bool = False
    # Why it cannot commit, if something in it failed that the caller caught: a block nested
    # in it that raised (its changes are part of this transaction's, so they go with it), or
    # a call that got no answer.
    doomed: str | None = None
    # The targets of calls that got no answer (timed out, their silo lost, cancelled): they
    # may have joined, so an abort goes to them too.
    uncertain: set[ActorId] = field(default_factory=set)
    _settled: asyncio.Future[None] | None = None

    def call_started(self) -> None:
        if self.ended:
            raise InvalidCallError(
                f"transaction {self.txid} has ended (its block or turn is over): a call made "
                "in it now could not be part of it; await the calls a transaction makes "
                "before it ends"
            )
        self.running += 1

    def call_ended(self, joined: Iterable[ActorId]) -> None:
        self.participants.update(joined)
        self._one_ended()

    def call_lost(self, target: ActorId) -> None:
        """A call to ``target`` ended with no answer: whether it joined (and what it changed,
        there or further on) cannot be known, so the transaction cannot commit."""
        self.uncertain.add(target)
        if self.doomed is None:
            self.doomed = (
                f"a call to {target} in it got no answer (it timed out, its silo was lost, or "
                "it was cancelled): what it did in the transaction cannot be known"
            )
        self._one_ended()

    def _one_ended(self) -> None:
        self.running -= 1
        if not self.running and self._settled is not None:
            self._settled.set_result(None)
            self._settled = None

    async def end(self) -> None:
        """Wait for the calls made in the transaction that are still running (each bounded
        by its deadline), then refuse any further one."""
        while self.running:
            if self._settled is None:
                self._settled = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._settled)
        self.ended = True

    @classmethod
    def new(cls, start: float | None = None) -> TransactionContext:
        """A new transaction; ``start`` (its age, for wait-die) defaults to now."""
        return cls(new_txid(), time.time() if start is None else start, set())

    @classmethod
    def joined(cls, txid: str, start: float, first: ActorId) -> TransactionContext:
        """The transaction as a participant's turn sees it: it holds that participant."""
        return cls(txid, start, {first}, in_turn=True)

    def header(self, target: ActorId) -> bytes:
        """What a call made in this transaction to ``target`` carries: its id, its age,
        whether it holds any lock yet, whether it comes from a running turn (see
        ``TxTicket.dies``), and whether it joined ``target`` already (see ``TxTicket.rejoins``)."""
        header = [
            self.txid,
            self.start,
            bool(self.participants),
            self.in_turn,
            target in self.participants,
        ]
        return msgpack.packb(header)  # type: ignore[no-any-return]


# The transaction the current task (a client block or an actor's turn) runs in, if any. Every
# turn starts outside any transaction; a participant's turn enters its own (see TxScope).
current_transaction: ContextVar[TransactionContext | None] = ContextVar(
    "raygrain_transaction", default=None
)
turn_variable(current_transaction, None)


def encode_participants(participants: Iterable[ActorId]) -> list[list[Any]]:
    return [[p.type_name, p.key] for p in participants]


def decode_participants(items: Iterable[Any]) -> list[ActorId]:
    return [ActorId(t, k) for t, k in items]
