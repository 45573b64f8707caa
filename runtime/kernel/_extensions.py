"""The kernel's extension surface: how a capability joins a silo without the kernel knowing it.

The kernel (silo, activation, turns, caller) imports no capability. A capability (transactions,
timers, reminders, metrics, ...) subclasses ``Extension`` and is handed to the ``Silo`` when it
is built; the silo calls the hooks the extension overrides, and nothing for the ones it leaves
alone (the silo collects the overridden hooks once, so an unused hook costs nothing per turn).
This is the role Orleans gives ``ILifecycleParticipant`` (start and stop with the silo) and
``IIncomingGrainCallFilter`` / ``IOutgoingGrainCallFilter`` (before and after a call).

What a silo offers a capability:
- ``attach``: the silo is built; register system messages (``Silo.register_system_method``).
- ``start`` / ``stop``: background work that lives as long as the silo (``Silo.spawn``).
- ``view_changed``: the membership view changed (ownership of actors may have moved).
- ``activated`` / ``deactivating``: an activation's lifecycle (its instance exists in between).
- ``accept``: a request was decoded and checked; the extension may give the ``Delivery`` a
  ``ticket`` (a ``Ticket``), which then governs the call's admission and its turn.
- ``turn_started`` / ``turn_ended``: every turn of every call, to observe it (traces): the
  start runs inside the turn's task; the end gets the error (None: it succeeded) and how long
  the turn took. Only silos with an extension overriding them read the time at all.
- ``turn_timings``: where the durations of one actor type and method's turns go (metrics), a
  ``TurnTimings`` asked for once per type and method and kept by the silo: each turn's
  duration is then a list append, with no call per turn (see ``Timings``).
- ``wrap_storage``: the silo's storage provider, to observe it (called as the silo is built).
- ``stats``: figures the extension adds to ``Silo.stats()``.

What a turn offers (through the delivery's ticket, and the activation's guard):
- ``Ticket.admit`` / ``Guard.admit``: whether the call runs now, waits, or was diverted (set
  aside or refused by the capability). Consulted only for deliveries with a ticket or while an
  activation has a guard, so a plain call on a plain activation pays one attribute test.
- ``Ticket.begin``: a ``TurnScope`` for the turn: whether the turn's changes wait for the
  capability (instead of the per-turn commit), what the turn's task should see (``enter``), and
  what happens when the method returned (``succeeded``) or raised (``failed``).

What a caller offers (``CallFilter``): stamp an outgoing request and read its response, e.g. to
carry a transaction or a trace context across the call; and (``CallObserver``) every call's
duration, into a ``CallTimings`` per actor type and method that the caller asks for once.

Context variables a capability keeps per turn are registered with ``turn_variable``: every
turn starts with them at their defaults, like the kernel's own.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

from raygrain.actors import ActorId, DeactivationReason
from raygrain.storage import StorageProvider

if TYPE_CHECKING:
    from raygrain.runtime.kernel._activation import Activation, Delivery
    from raygrain.runtime.kernel._messages import Request, Response
    from raygrain.runtime.kernel._silo import Silo
    from raygrain.runtime.kernel._view import MembershipView

__all__ = [
    "FLUSH_TIMINGS_AT",
    "Admission",
    "CallFilter",
    "CallObserver",
    "CallTimings",
    "Extension",
    "Guard",
    "Ticket",
    "Timings",
    "TurnEnding",
    "TurnScope",
    "TurnTimings",
    "turn_variable",
    "turn_variables",
]


class Admission(enum.Enum):
    """A capability's verdict on a delivered call."""

    RUN = "run"  # it may start now (as far as this capability goes)
    WAIT = "wait"  # not yet: it stays queued, behind it everything else waits too
    DIVERTED = "diverted"  # the capability took it (set it aside, or refused it with a reply)


class TurnScope(Protocol):
    """A capability's part in one turn (see ``Ticket.begin``)."""

    # True: the turn's state changes are not committed per turn; the capability commits or
    # rolls them back itself (a transaction's changes commit with the transaction).
    defers_commit: bool

    def enter(self) -> None:
        """Called inside the turn's task before the method runs (set context variables)."""

    async def succeeded(self) -> None:
        """The method returned (and its per-turn write, if any, committed). Raising here fails
        the turn with that error."""

    async def failed(self, error: Exception) -> None:
        """The method (or ``succeeded``) raised; the turn's per-turn changes were rolled back."""

    def joined(self) -> tuple[ActorId, ...]:
        """Actors to report to the caller in the response (``Response.joined``)."""


class TurnEnding(Protocol):
    """Work a turn's method hands over to finish the turn after it returned
    (``Activation.end_turn_with``): an event-sourced actor's append. The caller's reply waits
    for it, and no other turn of the activation starts before it is done."""

    # True: ``start`` can do it with no task waiting (a queued append); False: the turn
    # awaits ``finish``.
    deferrable: bool

    def start(self, done: Callable[[Exception | None], None]) -> None:
        """Begin; call ``done`` exactly once, on the event loop, with None (the turn succeeded)
        or the error that fails it. Must not raise."""

    async def finish(self) -> None:
        """The same, awaited inside the turn (not ``deferrable``, or a turn with a
        ``TurnScope``); raising fails it."""

    def abandon(self) -> None:
        """The turn failed after its method returned (its result could not be sent): do
        none of it."""


class Ticket(Protocol):
    """What a capability attached to a delivery (``Extension.accept``)."""

    def admit(self, activation: Activation, delivery: Delivery) -> Admission: ...

    def begin(self, activation: Activation, delivery: Delivery) -> TurnScope | None: ...


class Guard(Protocol):
    """What a capability set on an activation it holds (``Activation.guard``): every call to
    the activation passes its ``admit`` while it is set."""

    # True while the capability owns the in-memory state's changes (``save()`` then writes
    # nothing and ``clear_state()`` is refused: the capability commits them).
    owns_changes: bool

    def admit(self, activation: Activation, delivery: Delivery) -> Admission: ...

    def drain(self, activation: Activation) -> list[Delivery]:
        """The activation is going away: drop the hold, return the calls set aside."""
        ...


class CallFilter(Protocol):
    """Sees every call a caller makes (keep it cheap: it runs on every call)."""

    def outgoing(self, request: Request) -> Callable[[Response | None], None] | None:
        """Stamp ``request`` before it is sent; return what to do with its response, if
        anything (called when the response arrives, before the result is decoded; with None
        when the call ended without one: a timeout, a lost silo, a cancelled caller)."""
        ...


# A ``Timings`` holding more pending durations than this is flushed.
FLUSH_TIMINGS_AT = 1023


class Timings(Protocol):
    """Where an observer takes the durations of one actor type and method's calls or turns.

    The kernel appends each duration (seconds) to ``pending`` and calls ``flush`` once it
    holds more than ``FLUSH_TIMINGS_AT``: a list append per call rather than a call into the
    observer (every call passes here, and on CPython 3.11 a call site that reaches several
    observers' functions costs several times a plain call). The observer may read and empty
    ``pending`` at any time, but must never replace the list."""

    pending: list[float]

    def flush(self) -> None: ...


class TurnTimings(Timings, Protocol):
    """A silo's turns of one actor type and method (``Extension.turn_timings``)."""

    def failed(self, error: Exception) -> None:
        """A turn failed with ``error`` (its duration is in ``pending`` too)."""


class CallTimings(Timings, Protocol):
    """A caller's calls to one actor type and method (``CallObserver.call_timings``)."""

    def failed(self, response: Response) -> None:
        """A call failed: ``response`` carries its error (a call that got no response, e.g. it
        timed out, passes a failed one made by the caller). Its duration is in ``pending``."""


class CallObserver(Protocol):
    """Sees every call a caller makes end, with how long it took, timed from sending to its
    response (the caller reads the clock once for all observers). A call filter may be one
    too; either goes in ``filters``."""

    def call_timings(self, type_name: str, method: str) -> CallTimings:
        """Where the calls to ``type_name.method`` go (asked once per pair, then kept)."""
        ...


class Extension:
    """A capability of the silo. Override the hooks you need; the others cost nothing."""

    def attach(self, silo: Silo) -> None:
        """The silo was built."""

    def start(self, silo: Silo) -> None:
        """The silo starts serving (inside its event loop): start background work with
        ``silo.spawn``, which the silo cancels when it closes."""

    async def stop(self, silo: Silo) -> None:
        """The silo is closing (its activations are already deactivated)."""

    def view_changed(self, silo: Silo, view: MembershipView) -> None:
        """The silo applied a new membership view."""

    def activated(self, activation: Activation) -> None:
        """``on_activate`` ran: the activation serves calls from now on."""

    def deactivation_begun(self, activation: Activation, reason: DeactivationReason) -> None:
        """The activation stopped starting turns; those running may still go on (the kernel
        waits for them, up to the deactivation timeout). Release here what a running turn
        waits for that only this capability would give it."""

    def deactivating(self, activation: Activation, reason: DeactivationReason) -> None:
        """The activation stopped taking turns and is about to run ``on_deactivate``."""

    def accept(self, silo: Silo, delivery: Delivery) -> None:
        """A request was checked and is about to be enqueued; set ``delivery.ticket`` to
        govern it."""

    def turn_started(self, activation: Activation, delivery: Delivery) -> None:
        """A turn starts (inside its task, before the method runs; context variables set here
        are the turn's own)."""

    def turn_ended(
        self, activation: Activation, delivery: Delivery, error: Exception | None, seconds: float
    ) -> None:
        """A turn that ``turn_started`` saw ended: replied to (or failed with ``error``) after
        ``seconds``, its per-turn write included. Per-turn values kept in ``delivery.extras``
        (under the capability's key) are there."""

    def turn_timings(self, type_name: str, method: str) -> TurnTimings | None:
        """Where the durations of ``type_name.method``'s turns go, if this extension times
        turns (asked once per type and method, then kept by the silo)."""
        return None

    def wrap_storage(self, storage: StorageProvider) -> StorageProvider:
        """The provider the silo should use instead of ``storage`` (to observe it). Called
        as the silo is built, before ``attach``."""
        return storage

    def stats(self, silo: Silo) -> dict[str, Any]:
        """Figures to add to ``Silo.stats()``."""
        return {}

    def call_filter(self) -> CallFilter | CallObserver | None:
        """A filter (or observer) for the calls the silo's actors make, if any."""
        return None


def overrides(extension: Extension, hook: str) -> bool:
    """Whether ``extension`` implements ``hook`` (the base class's are no-ops)."""
    return getattr(type(extension), hook) is not getattr(Extension, hook)


TURN_VARIABLES: list[tuple[ContextVar[Any], Any]] = []  # see turn_variable


def turn_variable(variable: ContextVar[Any], default: Any = None) -> None:
    """Have every turn start with ``variable`` set to ``default`` (a capability's per-turn
    context, e.g. the transaction a turn runs in). Call at import time of the capability."""
    if all(v is not variable for v, _ in TURN_VARIABLES):
        TURN_VARIABLES.append((variable, default))


def turn_variables() -> list[tuple[ContextVar[Any], Any]]:
    return TURN_VARIABLES


SystemHandler = Callable[["Request", list[Any]], None]
