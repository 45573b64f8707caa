"""State storage providers for raygrain actors.

Depends only on ``actors`` (for ids and errors). ``open_storage("sqlite:///app.db")`` turns a
URL into a provider (SQLAlchemy's convention: that file is relative to the working directory);
``MemoryStorage`` is for tests; ``SqliteStorage`` is the embedded default;
``PostgresStorage`` the store of a multi-node deployment. Each also keeps the event log
(``EventLog``: append-only streams with expected versions, and per-category feeds).

``PostgresStorage`` is imported on first use, and asyncpg with it: a process on SQLite does not
carry asyncpg's modules (thousands of objects that every full garbage collection goes through).
"""

from typing import TYPE_CHECKING, Any

from raygrain.storage._events import (
    Appended,
    EncodedEvents,
    EventLog,
    NewEvent,
    QueuedAppends,
    StoredEvent,
    checked_events,
    encoded_events,
)
from raygrain.storage._memory import MemoryStorage
from raygrain.storage._provider import (
    QueuedWrites,
    ReadsMany,
    SqlStep,
    SqlTransactions,
    StateRecord,
    StateWrite,
    StorageProvider,
    TimedWrites,
    WriteTimer,
    read_many,
    tell_written,
)
from raygrain.storage._reminders import ReminderAck, ReminderRecord, ReminderTable
from raygrain.storage._sqlite import SqliteStorage
from raygrain.storage._url import absolute_storage_url, check_storage_url, open_storage

if TYPE_CHECKING:
    from raygrain.storage._postgres import PostgresStorage

__all__ = [
    "Appended",
    "EncodedEvents",
    "EventLog",
    "MemoryStorage",
    "NewEvent",
    "PostgresStorage",
    "QueuedAppends",
    "QueuedWrites",
    "ReadsMany",
    "ReminderAck",
    "ReminderRecord",
    "ReminderTable",
    "SqlStep",
    "SqlTransactions",
    "SqliteStorage",
    "StateRecord",
    "StateWrite",
    "StorageProvider",
    "StoredEvent",
    "TimedWrites",
    "WriteTimer",
    "absolute_storage_url",
    "check_storage_url",
    "checked_events",
    "encoded_events",
    "open_storage",
    "read_many",
    "tell_written",
]


def __getattr__(name: str) -> Any:
    if name == "PostgresStorage":
        from raygrain.storage._postgres import PostgresStorage

        return PostgresStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
