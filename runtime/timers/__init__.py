"""Time: timers (in memory, turns of the actor) and durable reminders (owned by the ring owner,
stored with the cluster's storage provider), on the silo's clock.

Plugs into the kernel as the ``TimeService`` extension; actors reach it as ``self.timers`` and
``self.reminders``. See docs/timers.md.
"""

from raygrain.runtime.timers._extension import TimeService
from raygrain.runtime.timers._settings import ReminderSettings

__all__ = ["ReminderSettings", "TimeService"]
