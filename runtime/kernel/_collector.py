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
stay). ``gc_threshold=None`` leaves the collector alone.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

__all__ = ["DEFAULT_GC_THRESHOLD", "check_gc_threshold", "hold_collector"]

DEFAULT_GC_THRESHOLD = 10_000

_held: list[int] = []  # the thresholds asked for by the silos running in this process
_saved: tuple[int, int, int] | None = None  # the thresholds before the first of them
_set: tuple[int, int, int] | None = None  # what was set last; None: left alone (see _apply)


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
    if threshold is None:
        return _nothing
    global _saved, _set
    if not _held:
        _saved = _set = gc.get_threshold()
    _held.append(threshold)
    _apply()
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            _held.remove(threshold)
            _apply()

    return release


def _apply() -> None:
    global _saved, _set
    current = gc.get_threshold()
    if _set is not None and current != _set:
        _set = None  # changed by someone else since we set it: theirs stays, now and after
    if not _held:
        if _set is not None and _saved is not None:
            gc.set_threshold(*_saved)
        _saved = _set = None
    elif _set is not None:
        _set = (max(_held), *current[1:])
        gc.set_threshold(*_set)


def _nothing() -> None:
    pass
