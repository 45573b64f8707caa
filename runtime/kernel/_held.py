"""A setting of the whole process held while silos run in it (the collector's thresholds,
the interpreter's switch interval: runtime/kernel/_collector.py, _switching.py).

Several silos of one process (``Cluster.local``) share the one setting: each holds the value it
asked for, and the strongest of them is set. When the last hold is released the setting goes
back to what it was before the first, unless someone else changed it meanwhile (the
application's own tuning): from then on it is theirs, and stays.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["HeldSetting"]

V = TypeVar("V")  # what a silo asks for
S = TypeVar("S")  # what the process reads and sets


class HeldSetting(Generic[V, S]):
    """``read``/``write`` the process's setting; ``wanted(held, current)``: what to set while
    ``held`` (every value asked for, at least one) are held."""

    def __init__(
        self,
        read: Callable[[], S],
        write: Callable[[S], None],
        wanted: Callable[[list[V], S], S],
    ) -> None:
        self._read = read
        self._write = write
        self._wanted = wanted
        self._held: list[V] = []
        self._saved: S | None = None  # the setting before the first hold
        self._set: S | None = None  # what was set last; None: left alone (someone else's)
        # (Silos of loops in several threads hold and release it too.)
        self._lock = threading.Lock()

    def hold(self, value: V | None) -> Callable[[], None]:
        """Hold ``value`` until the returned release is called (once; a second call does
        nothing). None: nothing is held."""
        if value is None:
            return _nothing
        with self._lock:
            first = not self._held
            if first:
                self._saved = self._set = self._read()
            self._held.append(value)
            try:
                self._apply()
            except BaseException:  # (a value the process refuses: as if never held)
                self._held.pop()
                if first:
                    self._saved = self._set = None
                raise
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if not released:
                    released = True
                    self._held.remove(value)
                    self._apply()

        return release

    def _apply(self) -> None:
        current = self._read()
        if self._set is not None and current != self._set:
            self._set = None  # changed by someone else since: theirs stays, now and after
        if not self._held:
            if self._set is not None and self._saved is not None:
                self._write(self._saved)
            self._saved = self._set = None
        elif self._set is not None:
            self._write(self._wanted(self._held, current))
            self._set = self._read()  # (as the process keeps it: a float may be rounded)


def _nothing() -> None:
    pass
