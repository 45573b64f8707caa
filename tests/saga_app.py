"""Actors and a saga for the saga tests (local, crash and Ray).

``Ledger`` (one per saga) is what the steps act on: it records every application of a step
(``events``) and what is booked now (``booked``), deduplicating by the steps' idempotency keys,
so a test reads on the actors' state whether a step acted twice or was left undone. ``Trip``
runs ``flight``, then ``hotel`` and ``car`` in parallel, then ``pay`` (which has no
compensation); its input (``Plan``) says which step fails and how.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from raygrain import (
    Actor,
    IdempotencyKeys,
    Retry,
    Saga,
    SiloUnavailableError,
    TerminalError,
    idempotent,
    read_only,
    step,
)

# In-process hooks (local tests only): gates a step waits on, attempts seen per step.
GATES: dict[str, asyncio.Event] = {}
ATTEMPTS: Counter[str] = Counter()
BROKEN_COMPENSATIONS: set[str] = set()
REFUSED: set[str] = set()  # "<saga id>/<step>": the step refuses (terminally) while listed
STEPS = ("flight", "hotel", "car", "pay")


@dataclass
class Books:
    booked: dict[str, str] = field(default_factory=dict)  # step -> what it booked
    events: list[str] = field(default_factory=list)  # "do <step>" / "undo <step>", in order
    applied: IdempotencyKeys = field(default_factory=IdempotencyKeys)


class Ledger(Actor[Books], name="sagatest.Ledger"):
    @idempotent
    async def apply(self, key: str, step: str, value: str) -> str:
        self.state.booked[step] = value
        self.state.events.append(f"do {step}")
        return f"{step}:{value}"

    async def undo(self, key: str, step: str) -> None:
        applied = self.state.applied
        if f"{key}/undo" in applied:
            return
        self.state.booked.pop(step, None)
        self.state.events.append(f"undo {step}")
        applied.record(key)  # a late duplicate of the step is now a no-op
        applied.record(f"{key}/undo")

    @read_only
    async def books(self) -> Books:
        return self.state


@dataclass
class Plan:
    fail: str = ""  # this step fails terminally
    flaky: dict[str, int] = field(default_factory=dict)  # step -> retryable failures first
    lose_reply: str = ""  # this step's first attempt acts, then its outcome looks unknown
    gate: str = ""  # this step waits for GATES[saga id] (local tests)
    gate_after: str = ""  # this step acts, then waits for GATES[saga id] (local tests)
    delay: float = 0.0  # each step works this long after acting (a workload still running)
    broken_undo: str = ""  # this compensation fails while BROKEN_COMPENSATIONS holds it


class Trip(Saga[Plan], name="sagatest.Trip"):
    retry_policy = Retry(first_delay=0.0, max_attempts=5)
    compensation_policy = Retry(first_delay=0.0, max_attempts=3)

    @step
    async def flight(self, plan: Plan) -> str:
        return await self._do(plan, "flight")

    @flight.compensate
    async def cancel_flight(self, plan: Plan, booked: str | None) -> None:
        await self._undo(plan, "flight")

    @step(group="stay")
    async def hotel(self, plan: Plan) -> str:
        return await self._do(plan, "hotel")

    @hotel.compensate
    async def cancel_hotel(self, plan: Plan, booked: str | None) -> None:
        await self._undo(plan, "hotel")

    @step(group="stay")
    async def car(self, plan: Plan) -> str:
        return await self._do(plan, "car")

    @car.compensate
    async def cancel_car(self, plan: Plan, booked: str | None) -> None:
        await self._undo(plan, "car")

    @step
    async def pay(self, plan: Plan) -> str:
        return await self._do(plan, "pay")

    def _ledger(self) -> Ledger:
        return self.actors.get(Ledger, str(self.context.key))

    async def _do(self, plan: Plan, name: str) -> str:
        saga = str(self.context.key)
        ATTEMPTS[f"{saga}/{name}"] += 1
        if plan.gate == name:
            await GATES.setdefault(saga, asyncio.Event()).wait()
        if plan.fail == name or f"{saga}/{name}" in REFUSED:
            raise TerminalError(f"{name} refused")
        if self.current_step.attempt <= plan.flaky.get(name, 0):
            raise ConnectionError(f"{name}: flaky, attempt {self.current_step.attempt}")
        booked = await self._ledger().apply(self.idempotency_key, name, f"{name} for {saga}")
        if plan.gate_after == name:
            await GATES.setdefault(saga, asyncio.Event()).wait()
        if plan.delay:  # (work after the effect: a crash here leaves the step applied, unrecorded)
            await asyncio.sleep(plan.delay)
        if plan.lose_reply == name and self.current_step.attempt == 1:
            raise SiloUnavailableError(f"{name}: the reply was lost (the call did run)")
        return str(booked)

    async def _undo(self, plan: Plan, name: str) -> None:
        saga = str(self.context.key)
        ATTEMPTS[f"{saga}/undo {name}"] += 1
        if plan.broken_undo == name and saga in BROKEN_COMPENSATIONS:
            raise RuntimeError(f"cannot cancel the {name} right now")
        await self._ledger().undo(self.idempotency_key, name)


ACTORS = [Ledger, Trip]
