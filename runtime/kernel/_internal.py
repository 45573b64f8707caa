"""Internal turns: the runtime running a coroutine function as a turn of an activation.

A capability that acts on an actor on its own behalf (a timer's tick, a reminder's delivery)
needs the actor's turn discipline without a caller: the admission rule (not interleaved with
another exclusive turn unless asked; after the calls queued before it), the per-turn commit, and
the rollback when it raises. ``run_as_turn`` queues such a turn in the activation's mailbox as
a ``Delivery`` with no reply, governed by an ``InternalTurn`` ticket that reports how it ended.
Nothing here runs for ordinary calls.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from raygrain.actors import ActorMethod, MethodOptions
from raygrain.runtime.kernel._extensions import Admission
from raygrain.runtime.kernel._mailbox import Delivery
from raygrain.runtime.kernel._messages import Request

if TYPE_CHECKING:
    from raygrain.runtime.kernel._activation import Activation

__all__ = ["DROPPED", "InternalTurn", "TurnOutcome", "run_as_turn"]

# How an internal turn ended: None (ran and returned), the exception it raised, or DROPPED (it
# never ran: its activation went away first).
DROPPED = "dropped"
TurnOutcome = Exception | str | None

_SIGNATURE = inspect.Signature([inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)])


class InternalTurn:
    """The ticket (and turn scope) of an internal turn: it defers to a capability holding the
    activation (e.g. a transaction's lock), commits per turn, and resolves ``outcome``."""

    __slots__ = ("outcome",)

    defers_commit = False

    def __init__(self, outcome: asyncio.Future[TurnOutcome]) -> None:
        self.outcome = outcome

    def admit(self, activation: Activation, delivery: Delivery) -> Admission:
        guard = activation.guard
        return Admission.RUN if guard is None else guard.admit(activation, delivery)

    def begin(self, activation: Activation, delivery: Delivery) -> InternalTurn:
        return self

    def enter(self) -> None:
        pass

    async def succeeded(self) -> None:
        self._settle(None)

    async def failed(self, error: Exception) -> None:
        self._settle(error)

    def joined(self) -> tuple[Any, ...]:
        return ()

    def dropped(self) -> None:
        self._settle(DROPPED)

    def _settle(self, outcome: TurnOutcome) -> None:
        if not self.outcome.done():
            self.outcome.set_result(outcome)


def run_as_turn(
    activation: Activation,
    name: str,
    function: Callable[[], Awaitable[Any]],
    *,
    interleave: bool = False,
    keep_alive: bool = True,
) -> asyncio.Future[TurnOutcome]:
    """Queue ``function()`` as a turn of ``activation``; the future tells how it ended (after
    its state change committed or rolled back). ``interleave``: it may run beside other turns
    (like an ``@always_interleave`` method); ``keep_alive``: it counts as use of the
    activation for idle collection."""
    outcome: asyncio.Future[TurnOutcome] = asyncio.get_running_loop().create_future()

    async def turn(instance: Any) -> None:
        await function()

    options = MethodOptions(always_interleave=interleave, one_way=True)
    method = ActorMethod(name, turn, options, _SIGNATURE, 0)
    request = Request(0, activation.actor_id, name, b"", "", math.inf)
    delivery = Delivery(request, method, [], {}, math.inf, InternalTurn(outcome), keep_alive)
    activation.enqueue(delivery)
    return outcome
