"""Multi-actor transactions: two-phase locking per actor, committed in one storage write."""

from raygrain.runtime.transactions._transactions import (
    SYSTEM_METHODS,
    TX_ABORT,
    TX_COMMIT,
    TX_COORDINATE,
    TX_PREPARE,
    Coordinator,
    TransactionContext,
    TransactionSettings,
    TxTicket,
    current_transaction,
    decode_participants,
    encode_participants,
)

__all__ = [
    "SYSTEM_METHODS",
    "TX_ABORT",
    "TX_COMMIT",
    "TX_COORDINATE",
    "TX_PREPARE",
    "Coordinator",
    "TransactionContext",
    "TransactionSettings",
    "TxTicket",
    "current_transaction",
    "decode_participants",
    "encode_participants",
]
