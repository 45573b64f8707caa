"""The interpreter's switch interval while silos run in the process
(``SiloOptions.switch_interval``).

A thread that wants the GIL while another runs Python waits for it to let go: at the latest
after ``sys.getswitchinterval()`` (5 ms by default), when the running thread is asked to drop
it. A silo's event loop under load runs Python for milliseconds on end, and the threads beside
it (SQLite's writer and reader threads of ``SqliteStorage``, which let go of the GIL on every
call into SQLite and need it back after each) wait that long for it: a batch of event appends
on the writer thread then started when the loop had run out of work, and the loop sat idle
while the batch ran (a fifth of the time under 1,000 writers), instead of the two overlapping.

So while a silo runs, the interval is 1 ms: the writer's batch starts and goes on beside the
loop. Under 1,000 writers event appends went from 0.82 to 0.85 of the state writes' rate (median
of four alternating ``events_bench`` runs each), at a read-your-writes p99 of 13-17 ms against
6-13; state writes did not move (docs/decisions.md). A process whose only thread is the event
loop is not affected: nobody waits for the GIL.

Like the collector's thresholds (runtime/kernel/_collector.py), the setting is the process's,
held by its silos (the shortest asked for) and given back when the last stops, unless someone
else changed it meanwhile (runtime/kernel/_held.py). ``switch_interval=None`` leaves it alone.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Protocol

from raygrain.runtime.kernel._collector import hold_collector
from raygrain.runtime.kernel._held import HeldSetting

__all__ = [
    "DEFAULT_SWITCH_INTERVAL",
    "check_switch_interval",
    "hold_process_settings",
    "hold_switch_interval",
]

DEFAULT_SWITCH_INTERVAL = 0.001


def _write(seconds: float) -> None:
    # The interpreter keeps whole microseconds and truncates what it is given: 0.0002 read back
    # is 199.99...e-6, written as is 199 us. Half a microsecond more keeps the one meant.
    sys.setswitchinterval((round(seconds * 1e6) + 0.5) * 1e-6)


_SWITCHING: HeldSetting[float, float] = HeldSetting(
    sys.getswitchinterval, _write, lambda held, _: min(held)
)


def check_switch_interval(value: object) -> float | None:
    """``value`` as a silo's ``switch_interval`` (None, or seconds from 1e-6 to 1), else a
    ValueError naming it."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 1e-6 <= value <= 1.0
    ):
        raise ValueError(
            "switch_interval is the interpreter's thread switch interval in seconds, from "
            f"1e-6 to 1 (or None: leave it alone), got {value!r:.80}"
        )
    return float(value)


def hold_switch_interval(seconds: float | None) -> Callable[[], None]:
    """Set the switch interval to ``seconds`` (the shortest held) until the returned release
    is called (once; a second call does nothing). None: nothing is held."""
    return _SWITCHING.hold(check_switch_interval(seconds))


class _SiloSettings(Protocol):
    """(What hold_process_settings reads of a SiloOptions.)"""

    @property
    def gc_threshold(self) -> int | None: ...

    @property
    def switch_interval(self) -> float | None: ...


def hold_process_settings(options: _SiloSettings) -> Callable[[], None]:
    """What a silo holds while it runs (its ``SiloOptions``): the collector's young threshold
    (_collector) and the switch interval; the returned function gives both back."""
    collector = hold_collector(options.gc_threshold)
    try:
        switching = hold_switch_interval(options.switch_interval)
    except BaseException:
        collector()
        raise

    def release() -> None:
        collector()
        switching()

    return release
