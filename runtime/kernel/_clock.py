"""Clocks: the runtime asks a ``Clock`` for the time, so tests can move time by hand.

Idle collection and other periodic work read ``now()`` and wait with ``sleep()``; a
``ManualClock`` makes both deterministic (advance it, and the sleepers whose time has come wake).
Call deadlines use the event loop's own timer, which tests exercise with short timeouts.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import sys
import time
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock", "reads_monotonic"]


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Real time: ``time.monotonic`` and ``asyncio.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualClock:
    """Time that moves only when ``advance`` is called."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._cancelled = 0  # sleeps cancelled and still among the sleepers
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), future))
        try:
            await future
        except asyncio.CancelledError:
            # Dropped once they are most of the sleepers: a schedule cancels its sleep each
            # time an earlier entry comes, and they would stay until time passed them.
            self._cancelled += 1
            if self._cancelled > 64 and 2 * self._cancelled > len(self._sleepers):
                self._sleepers = [s for s in self._sleepers if not s[2].done()]
                heapq.heapify(self._sleepers)
                self._cancelled = 0
            raise

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose wake-up time has passed."""
        if seconds < 0:
            raise ValueError("time cannot go backwards")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)
            elif self._cancelled:
                self._cancelled -= 1


def reads_monotonic(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop``'s clock is ``time.monotonic``: asyncio's own loops, and uvloop's (the
    same clock, read in whole milliseconds: ``time.monotonic`` times a turn finer). A loop
    with a clock of its own (a test's) is read through ``loop.time()``."""
    reads = type(loop).time
    if reads is asyncio.BaseEventLoop.time:
        return True
    uvloop_class = getattr(sys.modules.get("uvloop"), "Loop", None)  # (never imported here)
    return uvloop_class is not None and reads is uvloop_class.time
