"""Internal turns: the runtime running a coroutine function as a turn of an activation.

A capability that acts on an actor on its own behalf (a timer's tick, a reminder's delivery)
needs the actor's turn discipline without a caller: the admission rule (not interleaved with
another exclusive turn unless asked; after the calls queued before it), the per-turn commit, and
the rollback when it raises. ``run_as_turn`` queues such a turn in the activation's mailbox as
a ``Delivery`` with no reply, governed by an ``InternalTurn`` ticket that reports how it ended.
Nothing here runs for ordinary calls.
"""

from __future__ import annotations

import functools
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


class InternalTurn:
    """The ticket (and turn scope) of an internal turn: it defers to a capability holding the
    activation (e.g. a transaction's lock), commits per turn, and reports how it ended."""

    __slots__ = ("on_end",)

    defers_commit = False

    def __init__(self, on_end: Callable[[TurnOutcome], object]) -> None:
        self.on_end: Callable[[TurnOutcome], object] | None = on_end

    def admit(self, activation: Activation, delivery: Delivery) -> Admission:
        guard = activation.guard
        return Admission.RUN if guard is None else guard.admit(activation, delivery)

    def begin(self, activation: Activation, delivery: Delivery) -> InternalTurn:
        return self

    def enter(self) -> None:
        pass

    async def succeeded(self) -> None:
        self._end(None)

    async def failed(self, error: Exception) -> None:
        self._end(error)

    def joined(self) -> tuple[Any, ...]:
        return ()

    def dropped(self) -> None:
        self._end(DROPPED)

    def _end(self, outcome: TurnOutcome) -> None:
        on_end, self.on_end = self.on_end, None
        if on_end is not None:
            on_end(outcome)


def _calling(interleave: bool) -> Callable[[Any, Callable[[], Awaitable[Any]]], Awaitable[None]]:
    async def call(instance: Any, function: Callable[[], Awaitable[Any]]) -> None:
        # An actor class may run its internal turns its own way (``__internal_turn__(instance,
        # function, interleave)``): an event-sourced actor appends the events a tick raised.
        around = getattr(type(instance), "__internal_turn__", None)
        if around is None:
            await function()
        else:
            await around(instance, function, interleave)

    return call


_call, _call_beside = _calling(False), _calling(True)


_SIGNATURE = inspect.Signature(
    [
        inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY),
        inspect.Parameter("function", inspect.Parameter.POSITIONAL_ONLY),
    ]
)


@functools.lru_cache(maxsize=4096)
def _method(name: str, interleave: bool) -> ActorMethod:
    # One per name: an internal turn is then a Request, a Delivery and a ticket, no more.
    options = MethodOptions(always_interleave=interleave, one_way=True)
    return ActorMethod(name, _call_beside if interleave else _call, options, _SIGNATURE, 1)


def run_as_turn(
    activation: Activation,
    name: str,
    function: Callable[[], Awaitable[Any]],
    on_end: Callable[[TurnOutcome], object],
    *,
    interleave: bool = False,
    keep_alive: bool = True,
) -> None:
    """Queue ``function()`` as a turn of ``activation``; ``on_end(outcome)`` is told how it
    ended (None, the exception it raised, or ``DROPPED``), once, after its state change
    committed or rolled back, before the turn lets the next one in. ``interleave``: it may
    run beside other turns (like an ``@always_interleave`` method); ``keep_alive``: it counts
    as use of the activation for idle collection."""
    request = Request(0, activation.actor_id, name, b"", "", math.inf)
    ticket = InternalTurn(on_end)
    method = _method(name, interleave)
    activation.enqueue(Delivery(request, method, [function], {}, math.inf, ticket, keep_alive))
