"""The process's cyclic garbage collector while silos run in it (``SiloOptions.gc_threshold``).

Python collects its youngest generation after every 700 new container objects (net of those
freed) by default. A silo under load has thousands of calls in flight, each with its frames,
futures and messages: a call lives for a few milliseconds, so at 700 the young collections
run hundreds of times a second and move the calls in flight into the older generations, where
only full collections free them. The full collections then come every half second or so, and
each traverses every object of the process with the event loop stopped: 30 to 65 ms under
1,000 writers here, a stall of every call in the process at once (the read-your-writes wait
of docs/event-sourcing.md had a p99 of 50 to 250 ms from them alone, 7 ms with no collection).

So while a silo runs, the young generation's threshold is raised (10,000 by default): the
calls in flight mostly end before a young collection sees them, and full collections become
rare (none in six seconds of that load, against twelve). Cycles are still collected, a little
later; memory grows by at most the threshold's worth of young objects.

The collector is the process's: several silos in one process (``Cluster.local``) share one
setting, the largest any of them asked for. When the last silo of the process stops, the
thresholds go back to what they were, unless someone else changed them meanwhile (then theirs
stay; runtime/kernel/_held.py). ``gc_threshold=None`` leaves the collector alone.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

from raygrain.runtime.kernel._held import HeldSetting

__all__ = ["DEFAULT_GC_THRESHOLD", "check_gc_threshold", "hold_collector"]

DEFAULT_GC_THRESHOLD = 10_000

# The young generation's threshold, the largest asked for (the older generations' stay).
_COLLECTOR: HeldSetting[int, tuple[int, int, int]] = HeldSetting(
    gc.get_threshold,
    lambda thresholds: gc.set_threshold(*thresholds),
    lambda held, current: (max(held), *current[1:]),
)


def check_gc_threshold(value: object) -> int | None:
    """``value`` as a silo's ``gc_threshold`` (None, or an int >= 1), else a ValueError
    naming it."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            "gc_threshold is the young generation's threshold of the garbage collector, an "
            f"int >= 1 (or None: leave the collector alone), got {value!r:.80}"
        )
    return value


def hold_collector(threshold: int | None) -> Callable[[], None]:
    """Raise the young generation's threshold to ``threshold`` until the returned release is
    called (once; a second call does nothing). None: nothing is held."""
    return _COLLECTOR.hold(check_gc_threshold(threshold))
