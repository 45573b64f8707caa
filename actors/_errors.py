"""Every error raygrain raises, in one place.

Errors cross processes (silo to client, silo to silo), so each one pickles and each one survives
the msgpack codec: the codec sends the class name and ``args`` and rebuilds the error from this
module's registry on the other side. Keep ``args`` equal to the constructor's arguments.

The tree::

    RaygrainError
    ├── ConfigurationError          bad actor class, option or cluster setting
    │   └── ClusterUnreachableError  no Ray at the address, or it refused us (a ConnectionError)
    ├── InvalidCallError            the call itself is wrong; nothing ran
    │   ├── UnknownActorTypeError   type name not registered on the cluster
    │   ├── UnknownMethodError      no such public async method (private, dunder, missing)
    │   ├── InvalidArgumentsError   arguments do not bind to the method's signature
    │   ├── MessageTooLargeError    an encoded message exceeds the configured limit
    │   ├── MalformedMessageError   a message on the wire is not a valid envelope
    │   ├── InvalidScheduleError    a timer or reminder with a bad name, due time or period
    │   ├── StaleReminderError      a reminder handle whose reminder was registered again
    │   ├── InvalidEventError       an event or an append to the event log is malformed
    │   └── InvalidStreamError      a bad stream id or namespace, an unknown subscription
    ├── SerializationError          a value cannot cross the copy boundary
    ├── ActorCallTimeout            the call's deadline expired (also a TimeoutError)
    ├── DeadlockError               a call cycle through non-reentrant actors
    ├── RemoteActorError            the actor raised an exception not importable by the caller
    ├── ClusterClosedError          the cluster or client was closed
    ├── ClusterNotStartedError      the cluster was used before ``async with`` started it
    ├── SiloUnavailableError        the silo died or left; the call's fate is unknown (retryable)
    ├── ActorOverloadedError        the actor's queue (or its connection) is full; did not run
    ├── TurnRolledBackError         an interleaved turn's rollback hit this turn; fate unknown
    ├── TurnCancelledError          the method raised asyncio.CancelledError; rolled back
    ├── StorageError                a state provider failed
    │   ├── InconsistentStateError  ETag mismatch: a stale writer was fenced
    │   ├── WrongExpectedVersionError  an event stream is not at the version an append expected
    │   ├── StateDecodeError        a stored record cannot be decoded into the state type
    │   └── StorageSchemaError      the store's file or schema is unusable (corrupt, newer version)
    ├── TransactionAbortedError     a multi-actor transaction aborted; none of it was kept
    ├── TransactionInDoubtError     a transaction's commit outcome is unknown (not retryable)
    ├── TerminalError               raised by a saga step: do not retry, compensate
    └── SagaError                   a saga cannot do what was asked
        ├── SagaFailedError         the saga ended without completing (compensated or stuck)
        ├── SagaConflictError       started again under its id with a different input
        ├── SagaVersionError        its progress belongs to another definition: it is parked
        └── UnknownSagaError        no saga was started under this id
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ActorCallTimeout",
    "ActorOverloadedError",
    "ClusterClosedError",
    "ClusterNotStartedError",
    "ClusterUnreachableError",
    "ConfigurationError",
    "DeadlockError",
    "InconsistentStateError",
    "InvalidArgumentsError",
    "InvalidCallError",
    "InvalidEventError",
    "InvalidScheduleError",
    "InvalidStreamError",
    "MalformedMessageError",
    "MessageTooLargeError",
    "RaygrainError",
    "RemoteActorError",
    "SagaConflictError",
    "SagaError",
    "SagaFailedError",
    "SagaVersionError",
    "SerializationError",
    "SiloUnavailableError",
    "StaleReminderError",
    "StateDecodeError",
    "StorageError",
    "StorageSchemaError",
    "TerminalError",
    "TransactionAbortedError",
    "TransactionInDoubtError",
    "TurnCancelledError",
    "TurnRolledBackError",
    "UnknownActorTypeError",
    "UnknownMethodError",
    "UnknownSagaError",
    "WrongExpectedVersionError",
]


class RaygrainError(Exception):
    """Base class of every error raised by raygrain itself."""


class ConfigurationError(RaygrainError):
    """An actor class, option or cluster setting is invalid."""


class ClusterUnreachableError(ConfigurationError, ConnectionError):
    """Ray cannot be reached at the address given (nothing listens there), or it refused the
    connection (most often a cluster with token authentication and a client without its
    settings). Also a ``ConnectionError``, what Ray itself raises, so code written for Ray
    catches it as before; the message says what to change."""


class InvalidCallError(RaygrainError):
    """The call cannot be delivered as made; no actor code ran."""


class UnknownActorTypeError(InvalidCallError):
    """The actor type is not registered on the cluster."""


class UnknownMethodError(InvalidCallError):
    """The actor has no public async method of that name."""


class InvalidArgumentsError(InvalidCallError):
    """The arguments do not bind to the method's signature."""


class MessageTooLargeError(InvalidCallError):
    """An encoded message is larger than the configured limit."""


class MalformedMessageError(InvalidCallError):
    """A message received from a peer is not a valid envelope (wrong fields or types)."""


class InvalidScheduleError(InvalidCallError):
    """A timer or reminder cannot be set up as asked: a name that is not a non-empty string,
    a negative due time, a period that is not positive or below the cluster's minimum, or a
    call from outside an actor's activation."""


class StaleReminderError(InvalidCallError):
    """The reminder handle is out of date: the reminder was registered again (or removed)
    since the handle was obtained. Get a fresh one with ``self.reminders.get(name)``."""


class InvalidEventError(InvalidCallError):
    """An event or an append cannot be stored as given: an empty stream, category or type
    name, a negative expected version, an event id used twice in one append, a stream that
    belongs to another category, or an append that repeats only some of a stream's stored
    events. Nothing was appended."""


class InvalidStreamError(InvalidCallError):
    """A stream operation cannot run as asked: a stream id or namespace that is not a
    non-empty string and a str/int key, an unknown subscription or dead letter, a position
    that is not an int >= 0, or a durable stream on a provider without an event log."""


class SerializationError(RaygrainError):
    """A value cannot be encoded or decoded by the raygrain codec."""


class ActorCallTimeout(RaygrainError, TimeoutError):
    """The call did not complete before its deadline; a late result is dropped."""


class DeadlockError(RaygrainError):
    """The call would close a cycle through non-reentrant activations."""


class ClusterClosedError(RaygrainError):
    """The cluster, client or silo handling the call has been closed."""


class ClusterNotStartedError(RaygrainError):
    """The cluster was used before it started (``async with`` or ``await cluster.start()``)."""


class SiloUnavailableError(RaygrainError):
    """The silo hosting the actor died or left while the call was in flight.

    The call may or may not have run. It is safe to retry when the method is idempotent.
    """


class ActorOverloadedError(RaygrainError):
    """The actor has too many calls queued (``max_queued_calls``), or its silo is not reading
    what is written to it fast enough (the direct plane's backlog is full): this call was
    refused before it ran. Retry after a pause; the actor is busy, not broken."""


class TurnRolledBackError(RaygrainError):
    """Another turn of the same activation, interleaved with this one, failed and rolled the
    shared state back while this turn ran. This turn's changes may have been discarded with
    it, or stored already by a third turn's write: like a lost connection, the outcome is
    unknown, so retry only if the method is idempotent."""


class TurnCancelledError(RaygrainError):
    """The actor method raised ``asyncio.CancelledError`` (or cancelled its own task) before
    returning. The turn failed like any other: its state changes were rolled back. A callee's
    cancellation never cancels the caller's task; it arrives as this error instead."""


class TransactionAbortedError(RaygrainError):
    """A multi-actor transaction was aborted; no participant kept any of its changes."""


class TransactionInDoubtError(RaygrainError):
    """A transaction's commit outcome is unknown: its decision write failed in a way that may
    or may not have stored it (a lost reply, a storage server that died mid-commit), and the
    decision could not be read back either. Every participant reloads whatever storage holds;
    the transaction is applied everywhere or nowhere, but raygrain cannot yet tell which.
    Not retried by ``Cluster.transact``: read the participants' state to find out, and retry
    only if the change is not there (or the body is idempotent)."""


class TerminalError(RaygrainError):
    """Raise it in a saga step (or compensation) to fail for good: the step is not retried,
    and the saga compensates what it did (a compensation that raises it leaves the saga
    stuck for an operator). Any other error is retried under the step's ``Retry``."""


class SagaError(RaygrainError):
    """A saga cannot do what was asked of it."""


class SagaFailedError(SagaError):
    """The saga ended without completing: ``saga`` names it (``type/id``), ``phase`` is
    ``"compensated"`` (every completed step was undone) or ``"stuck"`` (a compensation failed
    for good: an operator must look), ``reason`` says why it stopped (the step that failed
    and its error, an abort, a timeout) and, when stuck, the error of that compensation."""

    def __init__(self, saga: str, phase: str, reason: str) -> None:
        super().__init__(saga, phase, reason)
        self.saga = saga
        self.phase = phase
        self.reason = reason

    def __str__(self) -> str:
        if self.phase == "stuck":
            return (
                f"saga {self.saga} did not complete and is stuck (a compensation failed for "
                f"good; fix its cause, then resume() it): {self.reason}"
            )
        if self.phase == "compensated":
            return f"saga {self.saga} did not complete; its steps were compensated: {self.reason}"
        return f"saga {self.saga} did not complete ({self.phase}): {self.reason}"


class SagaConflictError(SagaError, InvalidCallError):
    """A saga was started again under its id with a different input (starting with the same
    input is idempotent: it returns the running saga's status)."""


class SagaVersionError(SagaError):
    """The saga's stored progress was made by another definition of its class (another
    ``version``, or other steps): it is parked, never run against the wrong steps, until code
    of its own version serves it again (see docs/sagas.md, "Changing a saga")."""


class UnknownSagaError(SagaError, InvalidCallError):
    """No saga was started under this id (``result``, ``abort`` and ``retry`` need one)."""


class RemoteActorError(RaygrainError):
    """An actor method raised an exception whose type the caller cannot import.

    ``type_name`` is the remote exception's qualified type name, ``message`` its text and
    ``remote_traceback`` the formatted traceback from the silo.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(type_name, message, remote_traceback)
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}"


class StorageError(RaygrainError):
    """A state storage provider failed."""


class StorageSchemaError(StorageError):
    """The store cannot be used: corrupt, locked, unwritable or from a newer schema version."""


class StateDecodeError(StorageError):
    """A stored state record cannot be decoded into the actor's state type."""


class InconsistentStateError(StorageError):
    """A write's expected ETag does not match the stored one.

    Raised to a stale writer, typically a duplicate activation; the runtime deactivates it.
    ``stored_etag`` is what the store holds (None: no record), ``expected_etag`` what the writer
    believed.
    """

    def __init__(self, stored_etag: str | None, expected_etag: str | None, what: str = "") -> None:
        super().__init__(stored_etag, expected_etag, what)
        self.stored_etag = stored_etag
        self.expected_etag = expected_etag
        self.what = what

    def __str__(self) -> str:
        target = f" for {self.what}" if self.what else ""
        return (
            f"ETag mismatch{target}: stored {self.stored_etag!r}, expected {self.expected_etag!r} "
            "(another writer changed the record first: a stale duplicate activation, or another "
            "cluster on the same storage, such as a second program on one SQLite file; nothing "
            "was written)"
        )


class WrongExpectedVersionError(StorageError):
    """An append to an event stream expected another version than the stream's: another writer
    (typically a stale duplicate activation) appended first. Nothing was appended.
    ``actual_version`` is the stream's version, ``expected_version`` what the writer believed."""

    def __init__(self, stream: str, expected_version: int, actual_version: int) -> None:
        super().__init__(stream, expected_version, actual_version)
        self.stream = stream
        self.expected_version = expected_version
        self.actual_version = actual_version

    def __str__(self) -> str:
        return (
            f"event stream {self.stream!r} is at version {self.actual_version}, "
            f"the append expected version {self.expected_version}"
        )


def error_types() -> dict[str, type[RaygrainError]]:
    """Every raygrain error class by name, for rebuilding errors that crossed the wire."""
    found: dict[str, type[RaygrainError]] = {}
    pending: list[type[RaygrainError]] = [RaygrainError]
    while pending:
        cls = pending.pop()
        found[cls.__name__] = cls
        pending.extend(cls.__subclasses__())
    return found


def rebuild_error(name: str, args: list[Any]) -> RaygrainError | None:
    """Rebuild a raygrain error from its class name and args, or None if unknown."""
    cls = error_types().get(name)
    if cls is None:
        return None
    try:
        return cls(*args)
    except TypeError:
        return None
