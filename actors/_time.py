"""What an actor sees of time: timers (``self.timers``) and durable reminders (``self.reminders``).

The runtime implements these protocols (``raygrain.runtime.timers``); this module only names
them, so that ``actors`` never imports the runtime. A timer lives in memory and dies with its
activation; a reminder is stored with the cluster's state and outlives activations, silos and
restarts. See docs/timers.md.
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Reminder", "ReminderTick", "Reminders", "Timer", "Timers"]


class Timer(Protocol):
    """A handle on one timer of this activation."""

    @property
    def name(self) -> str: ...

    @property
    def active(self) -> bool:
        """False once cancelled, fired for the last time (one-shot), or its activation went."""
        ...

    def change(self, due: float, period: float | None = None) -> None:
        """Next tick ``due`` seconds from now (from the end of the running tick when called
        inside it), then every ``period`` seconds (None: one-shot)."""
        ...

    def cancel(self) -> None:
        """No tick after this one (a running tick finishes)."""
        ...


class Timers(Protocol):
    """``self.timers``: an activation's timers. A tick is a turn of the actor."""

    def after(
        self,
        delay: float,
        callback: Callable[..., Awaitable[Any]],
        *args: Any,
        name: str | None = None,
        interleave: bool = False,
        keep_alive: bool = False,
    ) -> Timer:
        """Run ``callback(*args)`` once, ``delay`` seconds from now."""
        ...

    def every(
        self,
        period: float,
        callback: Callable[..., Awaitable[Any]],
        *args: Any,
        first: float | None = None,
        name: str | None = None,
        interleave: bool = False,
        keep_alive: bool = False,
    ) -> Timer:
        """Run ``callback(*args)`` ``first`` seconds from now (default: one ``period``), then
        ``period`` seconds after the end of each tick."""
        ...


@dataclass(frozen=True, slots=True)
class Reminder:
    """A registered reminder as stored: its first tick time and period (seconds, on the
    cluster's clock), and an ETag that changes when it is registered again."""

    name: str
    first_tick: float
    period: float
    etag: str


@dataclass(frozen=True, slots=True)
class ReminderTick:
    """What ``on_reminder`` receives. ``scheduled`` is the occurrence this tick stands for
    (``first_tick + n * period``); a late tick after a failover stands for the latest missed
    occurrence, so ``missed()`` tells how many earlier ones it replaces."""

    first_tick: float
    period: float
    scheduled: float

    @property
    def occurrence(self) -> int:
        """Which occurrence this is, counting the first as 0."""
        return round((self.scheduled - self.first_tick) / self.period)

    def missed(self, previous: ReminderTick | None) -> int:
        """Occurrences between ``previous`` (the last tick this actor saw) and this one."""
        if previous is None:
            return self.occurrence
        return max(0, self.occurrence - previous.occurrence - 1)


class Reminders(Protocol):
    """``self.reminders``: this actor's durable reminders (each call reads or writes storage)."""

    async def register(self, name: str, *, due: float, period: float) -> Reminder:
        """Register (or replace) reminder ``name``: first tick ``due`` seconds from now, then
        every ``period`` seconds. The actor receives ``on_reminder(name, tick)``."""
        ...

    async def get(self, name: str) -> Reminder | None: ...

    async def list(self) -> builtins.list[Reminder]: ...

    async def unregister(self, reminder: Reminder | str) -> bool:
        """Remove a reminder by name, or by handle (refused with ``StaleReminderError`` when
        it was registered again since). Returns whether one was removed."""
        ...
