"""Actor classes the test suite runs (importable, so Ray workers can load them too)."""

from __future__ import annotations

import asyncio
import contextvars
import decimal
import enum
import gc
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

from raygrain.actors import (
    Actor,
    ActorRef,
    DeactivationReason,
    always_interleave,
    call_timeout,
    one_way,
    read_only,
    transactional,
)
from tests import edge_app, saga_app, stream_app

# Hooks the tests set to observe or steer actors in this process (local mode only).
GATES: dict[str, asyncio.Event] = {}
EVENTS: list[tuple[str, Any]] = []


def gate(name: str) -> asyncio.Event:
    return GATES.setdefault(name, asyncio.Event())


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass
class Account:
    balance: int = 0
    history: list[int] = field(default_factory=list)


class InsufficientFunds(Exception):
    def __init__(self, needed: int, available: int) -> None:
        super().__init__(needed, available)
        self.needed = needed
        self.available = available


class BankAccount(Actor[Account], name="test.BankAccount"):
    async def deposit(self, amount: int) -> int:
        if amount <= 0:
            raise ValueError("amount must be positive")
        self.state.balance += amount
        self.state.history.append(amount)
        return self.state.balance

    async def withdraw(self, amount: int) -> int:
        self.state.balance -= amount
        self.state.history.append(-amount)
        if self.state.balance < 0:
            raise InsufficientFunds(amount, self.state.balance + amount)
        return self.state.balance

    async def change_and_undo(self) -> int:
        """A changing method that leaves the state as it found it."""
        self.state.history.append(0)
        self.state.history.pop()
        return self.state.balance

    async def deposit_returning_object(self, amount: int) -> Any:
        """Changes the state, then returns a value that cannot be encoded."""
        self.state.balance += amount
        return object()

    async def deposit_then_fail(self, amount: int) -> None:
        self.state.balance += amount
        raise RuntimeError("failed after changing state")

    @read_only
    async def balance(self) -> int:
        return self.state.balance

    @read_only
    async def snapshot(self) -> Account:
        return self.state


@dataclass
class Log:
    entries: list[str] = field(default_factory=list)


class Recorder(Actor[Log], name="test.Recorder"):
    """Records the start and end of each turn, yielding to the loop in between."""

    activations = 0

    async def on_activate(self) -> None:
        type(self).activations += 1
        EVENTS.append(("activate", self.context.key))

    async def on_deactivate(self, reason: DeactivationReason) -> None:
        EVENTS.append(("deactivate", (self.context.key, reason)))

    async def record(self, tag: str) -> int:
        self.state.entries.append(f"start {tag}")
        for _ in range(3):
            await asyncio.sleep(0)
        self.state.entries.append(f"end {tag}")
        return id(self)

    async def wait_for(self, gate_name: str) -> str:
        await gate(gate_name).wait()
        return "released"

    @always_interleave
    async def release(self, gate_name: str) -> None:
        gate(gate_name).set()

    @read_only
    async def read_barrier(self, name: str, parties: int) -> int:
        # Returns only once `parties` read-only calls are inside this method at the same time.
        arrived = BARRIERS.setdefault(name, [])
        arrived.append(self.context.key)
        if len(arrived) >= parties:
            gate(f"barrier-{name}").set()
        await gate(f"barrier-{name}").wait()
        return len(self.state.entries)

    @read_only
    async def entries(self) -> list[str]:
        return list(self.state.entries)

    @read_only
    async def bounded_sleep(self, seconds: float, limit: float) -> str:
        # A turn's own timeout must cancel the turn, never the task of whoever called it.
        try:
            async with asyncio.timeout(limit):
                await asyncio.sleep(seconds)
        except TimeoutError:
            return "timed out"
        return "slept"

    @read_only
    async def instance_id(self) -> int:
        return id(self)

    async def sleep(self, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "woke"

    @call_timeout(0.2)
    async def slow_with_short_timeout(self) -> None:
        await asyncio.sleep(5)

    @one_way
    async def fire(self, tag: str) -> None:
        self.state.entries.append(f"fired {tag}")
        gate(f"fired-{self.context.key}").set()

    async def leave(self) -> None:
        self.context.deactivate_on_idle()

    async def mark(self, tag: str) -> None:
        """An exclusive turn that says when it starts."""
        EVENTS.append(("mark", (self.context.key, tag)))

    @read_only
    async def read_wait(self, gate_name: str) -> str:
        EVENTS.append(("read_wait", (self.context.key, gate_name)))
        await gate(gate_name).wait()
        return "released"

    @always_interleave
    async def interleaved_wait(self, gate_name: str) -> str:
        EVENTS.append(("interleaved_wait", (self.context.key, gate_name)))
        await gate(gate_name).wait()
        return "released"

    async def adopt(self, entries: list[str]) -> None:
        """Keep the argument itself as the state's list (copy semantics: the caller's object
        must not be the one kept)."""
        self.state.entries = entries


BARRIERS: dict[str, list[Any]] = {}


class Reentrant(Actor[Log], name="test.Reentrant", reentrant=True):
    async def wait_for(self, gate_name: str) -> str:
        await gate(gate_name).wait()
        return "released"

    async def release(self, gate_name: str) -> None:
        gate(gate_name).set()

    async def call_back(self, other: ActorRef) -> str:
        return str(await other.ping_back(self.actors.get(Reentrant, self.context.key)))

    async def ping(self) -> str:
        return "pong"

    async def append(self, tag: str) -> int:
        self.state.entries.append(tag)
        await asyncio.sleep(0)  # let the other calls in
        return len(self.state.entries)

    async def append_then_wait(self, tag: str, gate_name: str) -> int:
        self.state.entries.append(tag)
        await gate(gate_name).wait()
        return len(self.state.entries)

    async def append_then_fail(self, tag: str) -> None:
        self.state.entries.append(tag)
        raise RuntimeError(f"{tag} failed after changing state")

    @read_only
    async def entries(self) -> list[str]:
        return list(self.state.entries)


class Chain(Actor[None], name="test.Chain"):
    """Calls other actors; used for deadlock detection and refs-as-arguments tests."""

    def describe(self) -> str:  # a plain helper: not callable from outside
        return f"chain {self.context.key}"

    async def stream_of(self) -> AsyncIterator[str]:  # an async generator: not callable either
        yield "never"

    async def relay(self, target: ActorRef, method: str, *args: Any) -> Any:
        return await target.invoke(method, *args)

    async def ping_back(self, caller: ActorRef) -> Any:
        return await caller.ping()

    async def ping(self) -> str:
        return f"pong from {self.context.key}"

    async def call_peer(self, peer_key: str) -> Any:
        return await self.actors.get(Chain, peer_key).call_peer_back(self.context.key)

    async def call_peer_back(self, peer_key: str) -> Any:
        return await self.actors.get(Chain, peer_key).ping()

    async def call_self(self) -> Any:
        return await self.actors.get(Chain, self.context.key).ping()

    async def echo(self, value: Any) -> Any:
        return value

    async def return_unserializable(self) -> Any:
        return object()

    async def where(self) -> int:
        return os.getpid()

    async def spin(self, seconds: float) -> int:
        """Hold the silo's event loop (and the GIL, mostly) in a CPU-bound loop."""
        end = time.perf_counter() + seconds
        spins = 0
        while time.perf_counter() < end:
            spins += 1
        return spins

    async def pass_ref(self, ref: ActorRef) -> ActorRef:
        return ref

    async def mutate_after_call(self, recorder: ActorRef) -> Any:
        """Change an argument after sending it and a result after getting it; return what the
        recorder then holds."""
        sent = ["x"]
        await recorder.adopt(sent)
        sent.append("changed after the call")
        got = await recorder.entries()
        got.append("changed after the reply")
        return await recorder.entries()

    async def make_bytes(self, size: int) -> bytes:
        return b"x" * size

    async def cycle(self, path: list[str]) -> Any:
        """Call the first key of ``path`` with the rest: a -> b -> c -> a for [b, c, a]."""
        if not path:
            return "end"
        return await self.actors.get(Chain, path[0]).cycle(path[1:])

    async def call_back_through(self, peer_key: str, method: str) -> Any:
        """An exclusive turn: ask ``peer_key`` to call ``method`` of this actor."""
        return await self.actors.get(Chain, peer_key).call_method_of(self.context.key, method)

    @read_only
    async def read_back_through(self, peer_key: str, method: str) -> Any:
        """A read-only turn: ask ``peer_key`` to call ``method`` of this actor."""
        return await self.actors.get(Chain, peer_key).call_method_of(self.context.key, method)

    async def call_method_of(self, key: str, method: str) -> Any:
        return await self.actors.get(Chain, key).invoke(method, "called back")

    @read_only
    async def peek(self, tag: str) -> str:
        return f"peeked: {tag}"

    @always_interleave
    async def interleaved_echo(self, tag: str) -> str:
        return f"interleaved: {tag}"

    @one_way
    async def note(self, tag: str) -> None:
        EVENTS.append(("note", (self.context.key, tag)))


class Worker(Actor[None], name="test.Worker", stateless_worker=True, max_local_workers=4):
    async def hold(self, gate_name: str) -> int:
        await gate(gate_name).wait()
        return id(self)

    async def quick(self) -> int:
        return id(self)

    async def gc_thresholds(self) -> tuple[int, int, int]:
        """The garbage collector's thresholds in the process hosting this silo."""
        return gc.get_threshold()

    async def switch_interval(self) -> float:
        """The interpreter's thread switch interval in the process hosting this silo."""
        return sys.getswitchinterval()

    async def round_trip(self, via: str) -> int:
        """Back to a worker of its own id through another actor: another activation serves
        it (this one waits for it)."""
        back: int = await self.actors.get(Chain, via).relay(
            self.actors.get(Worker, self.context.key), "quick"
        )
        assert back != id(self)
        return back


class Ephemeral(Actor[Log], name="test.Ephemeral", idle_timeout=10.0):
    async def on_activate(self) -> None:
        EVENTS.append(("ephemeral-activate", self.context.key))

    async def touch(self) -> int:
        return id(self)

    async def on_deactivate(self, reason: DeactivationReason) -> None:
        EVENTS.append(("ephemeral-deactivate", (self.context.key, reason)))


@dataclass
class Settings:
    color: Color = Color.RED
    tags: tuple[str, ...] = ()


class Explicit(Actor[Account], name="test.Explicit", persistence="explicit"):
    async def add(self, amount: int) -> int:
        self.state.balance += amount
        return self.state.balance

    async def add_and_save(self, amount: int) -> int:
        self.state.balance += amount
        await self.context.save()
        return self.state.balance

    @read_only
    async def balance(self) -> int:
        return self.state.balance

    async def wipe(self) -> None:
        await self.context.clear_state()

    async def add_then_fail(self, amount: int) -> None:
        self.state.balance += amount
        raise RuntimeError("failed after changing state")

    async def save_now(self) -> None:
        await self.context.save()

    async def leave(self) -> None:
        self.context.deactivate_on_idle()


class SlowLife(Actor[Log], name="test.SlowLife"):
    """Activation and deactivation each wait for a gate named after the key, so a test can
    send calls while the actor is activating or deactivating."""

    async def on_activate(self) -> None:
        EVENTS.append(("slow-activating", self.context.key))
        await gate(f"activate-{self.context.key}").wait()

    async def on_deactivate(self, reason: DeactivationReason) -> None:
        EVENTS.append(("slow-deactivating", (self.context.key, reason)))
        await gate(f"deactivate-{self.context.key}").wait()

    async def mark(self, tag: str) -> None:
        EVENTS.append(("slow-mark", (self.context.key, tag)))
        self.state.entries.append(tag)

    @always_interleave
    async def interleaved_mark(self, tag: str) -> None:
        EVENTS.append(("slow-interleaved-mark", (self.context.key, tag)))

    async def leave(self) -> None:
        self.context.deactivate_on_idle()

    @read_only
    async def entries(self) -> list[str]:
        return list(self.state.entries)


class Unregistered(Actor[None], name="test.Unregistered"):
    async def ping(self) -> str:
        return "pong"


@dataclass
class Ledger:
    balance: int = 0
    applied: list[int] = field(default_factory=list)  # transfer ids, in the order applied


class Vault(Actor[Ledger], name="test.Vault"):
    """An account that takes part in transactions; each change records its transfer id."""

    @transactional
    async def add(self, transfer: int, amount: int) -> int:
        if self.state.balance + amount < 0:
            raise InsufficientFunds(-amount, self.state.balance)
        self.state.balance += amount
        self.state.applied.append(transfer)
        return self.state.balance

    @transactional
    async def transfer_to(self, other: str, transfer: int, amount: int) -> None:
        """Starts a transaction of its own (when called outside one): debit here, credit
        ``other``, both or neither."""
        await self.add(transfer, -amount)
        await self.actors.get(Vault, other).add(transfer, amount)

    @transactional
    async def add_then_fail(self, transfer: int, amount: int) -> None:
        await self.add(transfer, amount)
        raise RuntimeError("failed inside the transaction")

    @transactional
    async def wipe(self) -> None:
        await self.context.clear_state()

    @transactional
    async def hold_unserializable(self) -> None:
        self.state.applied.append(object())  # type: ignore[arg-type]

    @transactional
    async def add_returning_object(self, transfer: int, amount: int) -> Any:
        """Changes the state, then returns a value that cannot be encoded."""
        await self.add(transfer, amount)
        return object()

    async def deposit(self, amount: int) -> int:
        """Not transactional: commits on its own, after any transaction holding the actor."""
        self.state.balance += amount
        return self.state.balance

    @read_only
    async def ledger(self) -> Ledger:
        return self.state


# A context variable user code sets inside turns (see ContextUser).
USER_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("test_user_var", default="unset")


class ContextUser(Actor[None], name="test.ContextUser"):
    async def on_activate(self) -> None:
        self.seen_on_activate = USER_VAR.get()

    async def on_deactivate(self, reason: DeactivationReason) -> None:
        EVENTS.append(("context-user-deactivate", USER_VAR.get()))

    async def swap(self, value: str) -> str:
        """Set USER_VAR, wait a moment, and return what it was before."""
        before = USER_VAR.get()
        USER_VAR.set(value)
        await asyncio.sleep(0)
        return before

    async def activation_saw(self) -> str:
        return self.seen_on_activate

    async def leave(self, value: str) -> None:
        """Set USER_VAR, then ask to be deactivated: on_deactivate must not see it."""
        USER_VAR.set(value)
        self.context.deactivate_on_idle()

    async def cancel_own_task(self) -> str:
        """Cancel the task running this turn, then return without waiting."""
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        return "returned"

    async def decimal_sum(self, values: list[str]) -> str:
        """Decimal arithmetic (the decimal module keeps its settings in a context variable)."""
        total = sum((decimal.Decimal(v) for v in values), decimal.Decimal(0))
        await asyncio.sleep(0)
        return str(total)


class Preferences(Actor[dict[str, int]], name="test.Preferences"):
    """An actor whose methods take the names users reach for first (issue 13, part 5)."""

    async def get(self, name: str) -> int | None:
        return self.state.get(name)

    async def save(self, name: str, value: int) -> None:
        self.state[name] = value
        await self.context.save()  # the context's save, beside the actor's own

    async def key(self) -> str:
        return str(self.context.key)

    async def id(self) -> str:
        return str(self.context.id)

    @read_only
    async def items(self) -> list[tuple[str, int]]:
        return sorted(self.state.items())

    async def update(self, values: dict[str, int]) -> None:
        self.state.update(values)

    async def delete(self, name: str) -> bool:
        return self.state.pop(name, None) is not None

    @read_only
    async def value(self) -> int:
        return sum(self.state.values())

    @read_only
    async def myself(self) -> ActorRef:
        """A reference to this actor with a deadline (``Actor.with_timeout``)."""
        return cast(ActorRef, self.with_timeout(3))

    async def copy_from(self, other: str, name: str) -> int | None:
        """Read a setting from another Preferences actor (its ``get``, via ``self.actors``)."""
        found = await self.actors.get(Preferences, other).get(name)
        if found is not None:
            self.state[name] = found
        return found


@dataclass
class AlarmState:
    ticks: list[float] = field(default_factory=list)  # each tick's scheduled time
    delivered: list[float] = field(default_factory=list)  # and when it arrived (time.time())


class Alarm(Actor[AlarmState], name="tests.Alarm"):
    """Records every reminder tick it receives (state, committed per tick)."""

    async def arm(self, period: float) -> float:
        reminder = await self.reminders.register("alarm", due=period, period=period)
        return reminder.first_tick

    async def on_reminder(self, name: str, tick: Any) -> None:
        self.state.ticks.append(tick.scheduled)
        self.state.delivered.append(time.time())

    async def ticks(self) -> list[float]:
        return list(self.state.ticks)

    async def disarm(self) -> bool:
        return await self.reminders.unregister("alarm")

    async def armed(self) -> list[str]:
        return [r.name for r in await self.reminders.list()]

    async def lateness(self) -> list[float]:
        """How late each tick arrived (never negative: a reminder is never early)."""
        return [d - t for t, d in zip(self.state.ticks, self.state.delivered, strict=True)]


ALL_ACTORS: list[type[Actor[Any]]] = [
    Vault,
    BankAccount,
    Recorder,
    Reentrant,
    Chain,
    Worker,
    Ephemeral,
    Explicit,
    ContextUser,
    Preferences,
    Alarm,
    SlowLife,
    *edge_app.EDGE_ACTORS,
    *saga_app.ACTORS,
    *stream_app.STREAM_ACTORS,
]
