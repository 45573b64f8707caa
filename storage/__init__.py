"""State storage providers for raygrain actors.

Depends only on ``actors`` (for ids and errors). ``open_storage("sqlite:///app.db")`` turns a
URL into a provider; ``MemoryStorage`` is for tests; ``SqliteStorage`` is the embedded default.
"""

from raygrain.storage._memory import MemoryStorage
from raygrain.storage._provider import (
    QueuedWrites,
    StateRecord,
    StateWrite,
    StorageProvider,
    tell_written,
)
from raygrain.storage._reminders import ReminderAck, ReminderRecord, ReminderTable
from raygrain.storage._sqlite import SqliteStorage
from raygrain.storage._url import open_storage

__all__ = [
    "MemoryStorage",
    "QueuedWrites",
    "ReminderAck",
    "ReminderRecord",
    "ReminderTable",
    "SqliteStorage",
    "StateRecord",
    "StateWrite",
    "StorageProvider",
    "open_storage",
    "tell_written",
]
