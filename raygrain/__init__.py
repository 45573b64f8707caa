"""raygrain: Orleans-style virtual actors for Python, hosted on Ray.

The one import users write::

    from raygrain import Actor, Cluster, read_only, transactional

The implementation lives in three packages, installed under this name: ``raygrain.actors``
(the programming model), ``raygrain.runtime`` (silos, placement, hosting) and
``raygrain.storage`` (state providers). This module re-exports what a user needs from them.
"""

from importlib.metadata import PackageNotFoundError, version

from raygrain.actors import (
    Actor,
    ActorCallTimeout,
    ActorContext,
    ActorId,
    ActorKey,
    ActorOptions,
    ActorOverloadedError,
    ActorRef,
    ClusterClosedError,
    ClusterNotStartedError,
    ConfigurationError,
    DeactivationReason,
    DeadlockError,
    InconsistentStateError,
    InvalidArgumentsError,
    InvalidCallError,
    InvalidScheduleError,
    MalformedMessageError,
    MessageTooLargeError,
    Persistence,
    RaygrainError,
    Reminder,
    ReminderTick,
    RemoteActorError,
    SerializationError,
    SiloUnavailableError,
    StaleReminderError,
    StateDecodeError,
    StorageError,
    StorageSchemaError,
    Timer,
    TransactionAbortedError,
    TransactionInDoubtError,
    TurnCancelledError,
    TurnRolledBackError,
    UnknownActorTypeError,
    UnknownMethodError,
    always_interleave,
    call_timeout,
    one_way,
    read_only,
    register_type,
    transactional,
)
from raygrain.runtime import (
    Cluster,
    FailureDetection,
    ManualClock,
    ReminderSettings,
    SystemClock,
    TransactionSettings,
    configure_logging,
)
from raygrain.storage import MemoryStorage, SqliteStorage, StorageProvider, open_storage

try:
    __version__ = version("raygrain")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Actor",
    "ActorCallTimeout",
    "ActorContext",
    "ActorId",
    "ActorKey",
    "ActorOptions",
    "ActorOverloadedError",
    "ActorRef",
    "Cluster",
    "ClusterClosedError",
    "ClusterNotStartedError",
    "ConfigurationError",
    "DeactivationReason",
    "DeadlockError",
    "FailureDetection",
    "InconsistentStateError",
    "InvalidArgumentsError",
    "InvalidCallError",
    "InvalidScheduleError",
    "MalformedMessageError",
    "ManualClock",
    "MemoryStorage",
    "MessageTooLargeError",
    "Persistence",
    "RaygrainError",
    "Reminder",
    "ReminderSettings",
    "ReminderTick",
    "RemoteActorError",
    "SerializationError",
    "SiloUnavailableError",
    "SqliteStorage",
    "StaleReminderError",
    "StateDecodeError",
    "StorageError",
    "StorageProvider",
    "StorageSchemaError",
    "SystemClock",
    "Timer",
    "TransactionAbortedError",
    "TransactionInDoubtError",
    "TransactionSettings",
    "TurnCancelledError",
    "TurnRolledBackError",
    "UnknownActorTypeError",
    "UnknownMethodError",
    "__version__",
    "always_interleave",
    "call_timeout",
    "configure_logging",
    "one_way",
    "open_storage",
    "read_only",
    "register_type",
    "transactional",
]
