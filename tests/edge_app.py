"""Actors for the edge-case tests (tests/runtime/test_edges.py): behaviours from Orleans' own
test suite that once broke at the edges (issue 15). Importable, so Ray silos load them too;
they coordinate through their own state, never through this process's globals, unless a test
says it runs locally only."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

from raygrain.actors import Actor, ActorRef, DeactivationReason, always_interleave, transactional

# Gates the local-only tests open (cleared by the test that uses them).
GATES: dict[str, asyncio.Event] = {}


def gate(name: str) -> asyncio.Event:
    return GATES.setdefault(name, asyncio.Event())


@dataclass
class Account:
    balance: int = 0


class Starter(Actor[None], name="test.edge.Starter"):
    """A plain method that runs until released, and interleaving ones that wait for it."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.finish = asyncio.Event()

    async def long_method(self) -> str:
        self.started.set()
        await self.finish.wait()
        return "done"

    @always_interleave
    async def wait_until_started(self) -> str:
        await self.started.wait()
        return "started"

    @always_interleave
    async def let_finish(self) -> None:
        self.finish.set()


class Leaver(Actor[None], name="test.edge.Leaver"):
    """Each activation has a token of its own, to tell which one served a call."""

    def __init__(self) -> None:
        self.token = os.urandom(8).hex()

    async def token_of(self) -> str:
        return self.token

    async def leave_after(self, latch: str) -> str:
        """Ask to be deactivated, then wait for the ``Starter`` ``latch`` to be let finish."""
        self.context.deactivate_on_idle()
        await self.actors.get(Starter, latch).long_method()
        return self.token


class StuckOnDeactivate(Actor[None], name="test.edge.StuckOnDeactivate"):
    """An ``on_deactivate`` that never returns."""

    def __init__(self) -> None:
        self.token = os.urandom(8).hex()

    async def token_of(self) -> str:
        return self.token

    async def leave(self) -> None:
        self.context.deactivate_on_idle()

    async def on_deactivate(self, reason: DeactivationReason) -> None:
        await asyncio.Event().wait()


class Canceller(Actor[Account], name="test.edge.Canceller"):
    """Methods that change the state and then raise asyncio.CancelledError."""

    async def cancel_at_once(self, amount: int) -> None:
        self.state.balance += amount
        raise asyncio.CancelledError()

    async def cancel_after_waiting(self, amount: int) -> None:
        self.state.balance += amount
        await asyncio.sleep(0)
        raise asyncio.CancelledError()

    async def balance(self) -> int:
        return self.state.balance


class Grouper(Actor[None], name="test.edge.Grouper"):
    async def raise_group(self) -> None:
        raise ExceptionGroup("outer", [ValueError("x"), KeyError("k")])  # noqa: F821

    async def raise_nested_group(self) -> None:
        inner = ExceptionGroup("inner", [TypeError("t")])  # noqa: F821
        raise ExceptionGroup("outer", [inner, ValueError("v")])  # noqa: F821


class Proxy(Actor[None], name="test.edge.Proxy"):
    """Calls another actor and passes its error on."""

    def __init__(self) -> None:
        self.token = os.urandom(8).hex()

    async def token_of(self) -> str:
        return self.token

    async def relay(self, target: ActorRef, method: str, *args: object) -> object:
        return await target.invoke(method, *args)


class Typed(Actor[Account], name="test.edge.Typed"):
    """Sets its state to values of the wrong type."""

    def __init__(self) -> None:
        self.token = os.urandom(8).hex()

    async def deposit(self, amount: int) -> int:
        self.state.balance += amount
        return self.state.balance

    async def set_none(self) -> None:
        self.state = None  # type: ignore[assignment]

    async def set_int(self) -> None:
        self.state = 5  # type: ignore[assignment]

    async def balance_and_token(self) -> tuple[int, str]:
        return self.state.balance, self.token

    async def leave(self) -> None:
        self.context.deactivate_on_idle()


class SlowVault(Actor[Account], name="test.edge.SlowVault"):
    """A transactional change that waits for a gate (local tests only)."""

    @transactional
    async def add_after(self, gate_name: str, amount: int) -> int:
        gate(f"{gate_name}-entered").set()
        await gate(gate_name).wait()
        self.state.balance += amount
        return self.state.balance

    async def balance(self) -> int:
        return self.state.balance


EDGE_ACTORS: list[type[Actor[Any]]] = [
    Starter,
    Leaver,
    StuckOnDeactivate,
    Canceller,
    Grouper,
    Proxy,
    Typed,
    SlowVault,
]
