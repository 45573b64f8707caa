"""Timers: in-memory callbacks of one activation, each tick a turn of the actor.

A timer fires on the silo's ``Schedule``; its tick runs through ``run_as_turn``, so it follows
the actor's admission rule (not beside another exclusive turn unless ``interleave=True``),
commits what it changed like any turn and rolls back when it raises. A timer never overlaps
itself: the next tick is scheduled one period after the end of the previous one (Orleans'
semantics). A tick does not count as use of the activation unless ``keep_alive=True``, so an
actor with only a timer still goes idle; deactivation cancels every timer it has.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol

from raygrain.actors import InvalidScheduleError
from raygrain.runtime.kernel import (
    DROPPED,
    Activation,
    ActivationState,
    TurnOutcome,
    get_logger,
    run_as_turn,
)
from raygrain.runtime.timers._schedule import Entry, Schedule
from raygrain.runtime.timers._settings import check_delay, check_name

__all__ = ["ActivationTimers", "TimerHandle"]

EXTRAS_KEY = "timers"


class TimeService(Protocol):
    """What timers use of the silo's time service (``_extension.TimeService``)."""

    schedule: Schedule
    ticks_running: int  # timer and reminder turns queued or running


_LIVE = (ActivationState.ACTIVATING, ActivationState.VALID)


class TimerHandle:
    """One timer (``raygrain.actors.Timer``)."""

    __slots__ = (
        "_callback",
        "_change",
        "_entry",
        "_owner",
        "_period",
        "_ticking",
        "active",
        "interleave",
        "keep_alive",
        "name",
        "ticks",
    )

    def __init__(
        self,
        owner: ActivationTimers,
        name: str,
        callback: Callable[[], Awaitable[Any]],
        period: float | None,
        interleave: bool,
        keep_alive: bool,
    ) -> None:
        self._owner = owner
        self.name = name
        self._callback = callback
        self._period = period
        self.interleave = interleave
        self.keep_alive = keep_alive
        self.active = True
        self.ticks = 0  # ticks that ran (returned or raised)
        self._entry: Entry | None = None
        self._ticking = False
        self._change: float | None = None  # a change made during a tick: the next due time

    def __repr__(self) -> str:
        return f"<Timer {self.name!r} of {self._owner.activation.actor_id} active={self.active}>"

    def change(self, due: float, period: float | None = None) -> None:
        where = f"{self._owner.activation.actor_id}: timer {self.name!r}"
        if not self.active:
            raise InvalidScheduleError(f"{where} was cancelled; register a new one")
        due = check_delay(f"{where} due", due, positive=False)
        if period is not None:
            period = check_delay(f"{where} period", period, positive=True)
        self._period = period
        if self._ticking:
            self._change = due  # counted from the end of the running tick
        else:
            self._arm(due)

    def cancel(self) -> None:
        if self.active:
            self.stop()
            self._owner.timers.discard(self)

    def stop(self) -> None:
        self.active = False
        if self._entry is not None:
            self._entry.cancel()
            self._entry = None

    def _arm(self, delay: float) -> None:
        if self._entry is not None:
            self._entry.cancel()
        self._entry = self._owner.service.schedule.after(delay, self._fire)

    def _fire(self) -> None:
        self._entry = None
        activation = self._owner.activation
        if not self.active or activation.state not in _LIVE:
            self.stop()
            return
        self._ticking = True
        self._owner.service.ticks_running += 1
        run_as_turn(
            activation,
            f"timer {self.name}",
            self._callback,
            self._ticked,
            interleave=self.interleave,
            keep_alive=self.keep_alive,
        )

    def _ticked(self, result: TurnOutcome) -> None:
        self._owner.service.ticks_running -= 1
        self._ticking = False
        if result == DROPPED:
            if self.active and self._owner.activation.state is ActivationState.VALID:
                # Refused by a full mailbox: try again a period later (a one-shot: in 1 s).
                self._arm(self._period if self._period is not None else 1.0)
            else:
                self.stop()  # the activation went away before the tick could run
            return
        self.ticks += 1
        if isinstance(result, Exception):
            get_logger().warning(
                "timer_tick_failed",
                actor=str(self._owner.activation.actor_id),
                timer=self.name,
                error=repr(result),
            )
        if not self.active:
            return
        change, self._change = self._change, None
        if change is not None:
            self._arm(change)
        elif self._period is None:
            self.cancel()  # a one-shot timer is done
        else:
            self._arm(self._period)


class ActivationTimers:
    """``actor.timers``: the timers of one activation (``raygrain.actors.Timers``)."""

    __slots__ = ("activation", "service", "timers")

    def __init__(self, activation: Activation, service: TimeService) -> None:
        self.activation = activation
        self.service = service
        self.timers: set[TimerHandle] = set()

    @classmethod
    def of(cls, activation: Activation, service: TimeService) -> ActivationTimers:
        extras = activation.extras
        if extras is None:
            extras = activation.extras = {}
        found = extras.get(EXTRAS_KEY)
        if found is None:
            found = extras[EXTRAS_KEY] = cls(activation, service)
        return found

    def after(
        self,
        delay: float,
        callback: Callable[..., Awaitable[Any]],
        *args: Any,
        name: str | None = None,
        interleave: bool = False,
        keep_alive: bool = False,
    ) -> TimerHandle:
        return self._register(delay, None, callback, args, name, interleave, keep_alive)

    def every(
        self,
        period: float,
        callback: Callable[..., Awaitable[Any]],
        *args: Any,
        first: float | None = None,
        name: str | None = None,
        interleave: bool = False,
        keep_alive: bool = False,
    ) -> TimerHandle:
        label = name if isinstance(name, str) and name else _name_of(callback)
        where = f"{self.activation.actor_id}: timer {label!r}"
        period = check_delay(f"{where} period", period, positive=True)
        due = period if first is None else first
        return self._register(due, period, callback, args, name, interleave, keep_alive)

    def _register(
        self,
        due: float,
        period: float | None,
        callback: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        name: str | None,
        interleave: bool,
        keep_alive: bool,
    ) -> TimerHandle:
        actor = self.activation.actor_id
        if not callable(callback):
            raise InvalidScheduleError(
                f"{actor}: a timer's callback must be callable, got {callback!r}"
            )
        if not _is_async(callback):
            # (Each tick awaits it: a plain function would run, then fail every tick.)
            raise InvalidScheduleError(
                f"{actor}: a timer's callback must be an async function (async def), got "
                f"{_name_of(callback)!r}, a plain one"
            )
        name = check_name(f"{actor}: timer name", name if name is not None else _name_of(callback))
        due = check_delay(f"{actor}: timer {name!r} due", due, positive=False)
        if self.activation.state not in _LIVE:
            raise InvalidScheduleError(
                f"{actor}: timer {name!r} registered while the activation is "
                f"{self.activation.state.value}; timers die with their activation"
            )
        timer = TimerHandle(
            self, name, partial(callback, *args), period, bool(interleave), bool(keep_alive)
        )
        self.timers.add(timer)
        timer._arm(due)
        return timer

    def stop_all(self) -> None:
        for timer in self.timers:
            timer.stop()
        self.timers.clear()


def _is_async(callback: Callable[..., Any]) -> bool:
    """Whether calling ``callback`` makes a coroutine (an async function or method, a partial
    of one, or an object whose ``__call__`` is one)."""
    return inspect.iscoroutinefunction(callback) or inspect.iscoroutinefunction(
        getattr(callback, "__call__", None)  # noqa: B004
    )


def _name_of(callback: Callable[..., Any]) -> str:
    return str(getattr(callback, "__qualname__", None) or getattr(callback, "__name__", "timer"))
