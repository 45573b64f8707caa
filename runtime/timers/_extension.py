"""Timers and reminders as a silo capability: how they plug into the kernel's extensions.

- ``attach``: actors reach ``actor.timers`` and ``actor.reminders`` through the silo's
  services; the settings come from ``SiloOptions.capabilities`` (``ReminderSettings``).
- ``start``: the silo's ``Schedule`` task, the first load of the reminders this silo owns, and
  a periodic refresh of them.
- ``view_changed``: ownership moved; drop the reminders no longer owned, load the new ones.
- ``deactivating``: an activation's timers die with it.

Times: the schedule reads the silo clock's own time under a test clock (``ManualClock``), and
wall-clock time (``time.time``) under the system clock, because reminder times are stored and
must mean the same on every machine and after a restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from raygrain.actors import DeactivationReason
from raygrain.runtime.kernel import (
    Activation,
    Extension,
    MembershipView,
    Silo,
    SystemClock,
    get_logger,
)
from raygrain.runtime.timers._reminders import ActorReminders, Reminders
from raygrain.runtime.timers._schedule import Schedule
from raygrain.runtime.timers._settings import ReminderSettings
from raygrain.runtime.timers._timers import EXTRAS_KEY, ActivationTimers

__all__ = ["TimeService"]


class TimeService(Extension):
    """Timers and reminders on one silo."""

    def __init__(self) -> None:
        self.settings = ReminderSettings()
        self.ticks_running = 0  # timer and reminder turns queued or running
        self.silo: Silo
        self.schedule: Schedule
        self.now: Callable[[], float]
        self.reminders = Reminders(self)
        # Told, as each reminder tick's turn starts, the actor's type and how late the tick is
        # (seconds after its scheduled time, on the schedule's time scale): metrics.
        self.lateness_observers: list[Callable[[str, float], None]] = []
        self._tasks: list[asyncio.Task[None]] = []

    def attach(self, silo: Silo) -> None:
        self.silo = silo
        self.settings = silo.options.setting(ReminderSettings, ReminderSettings())
        self.now = time.time if isinstance(silo.clock, SystemClock) else silo.clock.now
        self.schedule = Schedule(silo.clock, self.now)
        silo.provide_service("timers", lambda a: ActivationTimers.of(a, self))
        silo.provide_service("reminders", lambda a: ActorReminders(a, self))

    def start(self, silo: Silo) -> None:
        self._tasks = [silo.spawn(self.schedule.run()), silo.spawn(self._refresh())]
        self.reminders.reload()

    async def stop(self, silo: Silo) -> None:
        for task in self._tasks:
            task.cancel()
        self.reminders.drop_all()
        # (The silo cancels its tasks after this: acks still on their way would be lost.)
        await self.reminders.flush_acks(silo.options.deactivation_timeout)

    def view_changed(self, silo: Silo, view: MembershipView) -> None:
        self.reminders.reload()

    def deactivating(self, activation: Activation, reason: DeactivationReason) -> None:
        timers = activation.extras.get(EXTRAS_KEY) if activation.extras else None
        if timers is not None:
            timers.stop_all()

    def quiet(self) -> bool:
        """Nothing due that has not fired, no tick queued or running, and no ack on its way to
        storage (tests wait for it after advancing a ``ManualClock``)."""
        reminders = self.reminders
        return (
            not self.ticks_running
            and not self.schedule.due()
            and not reminders.loading
            and not reminders.acking
        )

    async def _refresh(self) -> None:
        while True:
            await self.silo.clock.sleep(self.settings.refresh_period)
            try:
                self.reminders.reload()
            except Exception as exc:  # keep refreshing
                get_logger().error("reminders_refresh_failed", silo=self.silo.name, error=repr(exc))
