"""Imports flow one way (runtime -> storage -> actors), and each package's public face is
exactly what we mean to export."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {
    "actors": {"actors"},
    "storage": {"storage", "actors"},
    "runtime": {"runtime", "storage", "actors"},
}
OURS = {"actors", "runtime", "storage", "samples", "benchmarks", "tests"}


def _package_of(module: str) -> str:
    """`raygrain.runtime.kernel._silo` -> `runtime`. A bare `runtime` (not installed under that name
    any more) comes back as `bare runtime`, which no package is allowed to import."""
    parts = module.split(".")
    if parts[0] == "raygrain" and len(parts) > 1:
        return parts[1]
    return f"bare {parts[0]}" if parts[0] in OURS else parts[0]


def _imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(_package_of(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(_package_of(node.module))
    return {name for name in found if name.removeprefix("bare ") in OURS}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_flow_one_way(package: str) -> None:
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = _imported_packages(path) - ALLOWED[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


EXPORTS = {
    "actors": {
        "RESERVED", "Actor", "ActorCallTimeout", "ActorContext", "ActorFactory", "ActorId",
        "ActorKey", "ActorMethod", "ActorOptions", "ActorOverloadedError", "ActorRef",
        "ActorRuntime", "ClusterClosedError", "ClusterNotStartedError", "ConfigurationError",
        "ClusterUnreachableError",
        "DeactivationReason", "DeadlockError", "IdempotencyKeys", "InconsistentStateError",
        "InvalidArgumentsError", "InvalidCallError", "InvalidEventError", "InvalidScheduleError",
        "Invoker",
        "MalformedMessageError",
        "MessageTooLargeError", "MethodOptions", "Persistence", "RaygrainError", "Reminder",
        "ReminderTick", "Reminders", "RemoteActorError", "SerializationError",
        "SagaConflictError", "SagaError", "SagaFailedError", "SagaVersionError",
        "SiloUnavailableError",
        "StaleReminderError", "StateDecodeError", "StorageError", "StorageSchemaError",
        "TerminalError", "Timer", "Timers", "TransactionAbortedError",
        "TransactionInDoubtError", "TurnCancelledError",
        "TurnRolledBackError", "UnknownActorTypeError", "UnknownMethodError", "UnknownSagaError",
        "WrongExpectedVersionError", "actor_methods", "actor_options", "always_interleave",
        "call_timeout", "current_invoker", "decode", "decode_error", "decode_state", "decoder",
        "encode", "state_class",
        "encode_error", "encode_state", "idempotent", "method_options",
        "one_way", "read_only", "register_type", "transactional",
        # streams and observers
        "DeadLetter", "InvalidStreamError", "ObserverRef", "ObserverSet", "Stream",
        "StreamEvent", "StreamId", "Streams", "Subscription", "implicit_namespaces",
        "implicit_subscription",
    },
    "storage": {
        "Appended", "EventLog", "MemoryStorage", "NewEvent", "PostgresStorage", "StoredEvent",
        "QueuedAppends", "QueuedWrites", "ReminderAck", "ReminderRecord", "SqlStep",
        "SqlTransactions", "EncodedEvents", "checked_events", "encoded_events",
        "ReminderTable", "SqliteStorage", "StateRecord", "StateWrite", "StorageProvider",
        "TimedWrites", "WriteTimer", "absolute_storage_url", "check_storage_url", "open_storage",
        "ReadsMany", "read_many",
        "tell_written",
    },
    "runtime": {
        "Clock", "Cluster", "ConsistentHashRing", "EventSourcedActor", "FailureDetection",
        "ManualClock", "MembershipView", "MetricsSettings", "Projection", "ReadResult",
        "ReminderSettings", "Retry", "Rows", "Saga", "SagaPhase", "SagaSettings", "SagaStatus",
        "Sql", "SqlProjection",
        "Session", "SiloStatus", "StepContext", "SystemClock", "TracingSettings",
        "TransactionSettings", "Written", "configure_logging", "step",
        "ClusterStreams", "StreamRef", "StreamSettings",
    },
}  # fmt: skip


def test_the_top_level_package_reexports_the_user_api() -> None:
    import raygrain

    assert set(raygrain.__all__) == TOP_LEVEL
    for name in raygrain.__all__:
        assert hasattr(raygrain, name), f"raygrain.{name} is in __all__ but missing"


TOP_LEVEL = {
    "Actor", "ActorCallTimeout", "ActorContext", "ActorOverloadedError", "ActorId", "ActorKey",
    "ActorOptions", "ActorRef", "Cluster", "ClusterClosedError", "ClusterNotStartedError",
    "ClusterUnreachableError",
    "ConfigurationError", "DeactivationReason", "EventSourcedActor", "Projection", "ReadResult",
    "Rows", "Session", "Sql", "SqlProjection", "StoredEvent", "Written",
    "DeadlockError", "FailureDetection", "IdempotencyKeys", "InconsistentStateError",
    "InvalidArgumentsError", "InvalidCallError", "InvalidEventError", "InvalidScheduleError",
    "ManualClock", "MalformedMessageError",
    "MemoryStorage", "MessageTooLargeError", "MetricsSettings", "Persistence", "RaygrainError",
    "Reminder",
    "ReminderSettings", "ReminderTick", "RemoteActorError", "Retry", "Saga",
    "SagaConflictError", "SagaError", "SagaFailedError", "SagaVersionError", "SagaPhase",
    "SagaSettings",
    "SagaStatus", "SerializationError", "StepContext", "TerminalError", "UnknownSagaError",
    "idempotent", "step",
    "SiloUnavailableError", "SqliteStorage", "StaleReminderError", "StateDecodeError",
    "StorageError", "StorageProvider", "StorageSchemaError", "SystemClock", "Timer",
    "TracingSettings", "TransactionAbortedError", "TransactionSettings",
    "TransactionInDoubtError", "TurnCancelledError",
    "TurnRolledBackError", "UnknownActorTypeError", "UnknownMethodError",
    "WrongExpectedVersionError", "__version__",
    "always_interleave", "call_timeout", "configure_logging", "one_way", "open_storage",
    "read_only", "register_type", "transactional",
    "DeadLetter", "InvalidStreamError", "ObserverRef", "ObserverSet", "StreamEvent", "StreamId",
    "StreamSettings", "Subscription", "implicit_subscription",
}  # fmt: skip


@pytest.mark.parametrize("package", sorted(EXPORTS))
def test_public_names_are_exactly_the_intended_set(package: str) -> None:
    module = importlib.import_module(f"raygrain.{package}")
    assert set(module.__all__) == EXPORTS[package]
    for name in module.__all__:
        assert hasattr(module, name), f"{package}.{name} is in __all__ but missing"


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_implementation_lives_in_private_modules(package: str) -> None:
    modules = [p.name for p in (ROOT / package).glob("*.py") if p.name != "__init__.py"]
    assert all(name.startswith("_") for name in modules), modules
    assert (ROOT / package / "py.typed").exists()


# The runtime's rooms (runtime/<room>/) and which other rooms each may import. The kernel imports
# none: capabilities plug into it through its extension surface (kernel/_extensions.py), and
# runtime/_capabilities.py (the composition root) lists the capabilities every silo runs. A new
# room is declared here, with the rooms it needs; the graph must stay free of cycles.
ROOMS: dict[str, set[str]] = {
    "kernel": set(),
    "membership": {"kernel"},
    "transactions": {"kernel"},
    "timers": {"kernel"},
    "streams": {"kernel"},
    "events": {"kernel"},
    "sagas": {"kernel", "timers"},
    "wire": {"kernel"},
    "metrics": {"kernel", "transactions", "timers", "events"},
    "tracing": {"kernel", "transactions"},
    "_capabilities": {
        "kernel",
        "transactions",
        "timers",
        "events",
        "sagas",
        "streams",
        "metrics",
        "tracing",
    },
    "ray_host": {"kernel", "membership", "wire", "metrics", "_capabilities"},
    "cluster": {
        "kernel",
        "membership",
        "transactions",
        "timers",
        "streams",
        "sagas",
        "wire",
        "metrics",
        "tracing",
        "ray_host",
        "_capabilities",
    },
    "cli": {"kernel", "membership", "wire", "ray_host", "cluster", "sagas", "tracing"},
}
RUNTIME = ROOT / "runtime"


def _room_of(path: Path) -> str:
    relative = path.relative_to(RUNTIME)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _rooms_imported(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[:2] == ["raygrain", "runtime"] and len(parts) > 2:
                found.add(parts[2])
    return found


def test_every_room_of_the_runtime_is_declared() -> None:
    rooms = {p.name for p in RUNTIME.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in RUNTIME.glob("_*.py") if p.name != "__init__.py"}
    undeclared = (rooms | modules) - set(ROOMS)
    assert not undeclared, f"declare these rooms in ROOMS (tests/test_layering.py): {undeclared}"


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_rooms_import_only_the_rooms_they_build_on(room: str) -> None:
    paths = sorted((RUNTIME / room).rglob("*.py")) if (RUNTIME / room).is_dir() else []
    paths += [RUNTIME / f"{room}.py"] if (RUNTIME / f"{room}.py").exists() else []
    assert paths, f"room {room} has no code"
    for path in paths:
        bad = _rooms_imported(path) - ROOMS[room] - {room}
        assert not bad, f"{path.relative_to(ROOT)} (room {room}) imports rooms {sorted(bad)}"


def test_the_rooms_form_no_cycle() -> None:
    visiting: list[str] = []

    def visit(room: str) -> None:
        assert room not in visiting, f"import cycle between rooms: {[*visiting, room]}"
        visiting.append(room)
        for needed in ROOMS[room]:
            visit(needed)
        visiting.pop()

    for room in ROOMS:
        visit(room)


def test_no_module_of_the_runtime_grows_past_500_lines() -> None:
    big = {
        str(p.relative_to(ROOT)): n
        for p in RUNTIME.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 500
    }
    assert not big, f"split these modules along their seams: {big}"
