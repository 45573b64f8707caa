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

Transactions are the first user of the kernel's extension surface: ``Transactions`` is the
silo's extension, ``TransactionFilter`` the callers' filter (see ``_extension``).
"""

from raygrain.runtime.transactions._context import (
    TX_ABORT,
    TX_COMMIT,
    TX_COORDINATE,
    TX_PREPARE,
    TransactionContext,
    TransactionSettings,
    current_transaction,
    decode_participants,
    encode_participants,
)
from raygrain.runtime.transactions._coordinator import CommitObserver, Coordinator
from raygrain.runtime.transactions._extension import TransactionFilter, Transactions
from raygrain.runtime.transactions._locks import TxTicket

__all__ = [
    "TX_ABORT",
    "TX_COMMIT",
    "TX_COORDINATE",
    "TX_PREPARE",
    "CommitObserver",
    "Coordinator",
    "TransactionContext",
    "TransactionFilter",
    "TransactionSettings",
    "Transactions",
    "TxTicket",
    "current_transaction",
    "decode_participants",
    "encode_participants",
]
