"""One silo's schedule: callbacks due at times on the cluster's clock, one task for them all.

Timers and reminders both ask it for ``at(when, callback)``; a heap keeps them in time order
and the task sleeps on the silo's clock until the earliest is due (a ``ManualClock`` in tests,
so advancing it fires exactly what has come due). A task per timer would cost a coroutine and
a clock sleeper each: 10,000 reminders would be 10,000 sleeping tasks. Callbacks run on the
event loop, in due order, and must not block.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

from raygrain.runtime.kernel import Clock, get_logger

__all__ = ["Entry", "Schedule"]

_MIN_CANCELLED_TO_REBUILD = 64


class Entry:
    """One scheduled callback; ``cancel`` takes it off (cheaply: the heap drops it when due)."""

    __slots__ = ("callback", "cancelled", "schedule", "when")

    def __init__(self, when: float, callback: Callable[[], None], schedule: Schedule) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False
        self.schedule: Schedule | None = schedule  # None once off the heap

    def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        # Let go of what the callback holds (a timer holds its activation, instance and
        # state) now, not when the entry comes due, maybe hours later.
        self.callback = _nothing
        if self.schedule is not None:
            self.schedule.cancelled_one()


def _nothing() -> None:
    pass


class Schedule:
    """Callbacks at times, on ``clock`` (sleeping) and ``now`` (reading: the time scale)."""

    def __init__(self, clock: Clock, now: Callable[[], float]) -> None:
        self.clock = clock
        self.now = now
        self._heap: list[tuple[float, int, Entry]] = []
        self._cancelled = 0  # cancelled entries still on the heap
        self._order = itertools.count()
        self._wake: asyncio.Future[None] | None = None

    def at(self, when: float, callback: Callable[[], None]) -> Entry:
        entry = Entry(when, callback, self)
        earliest = self._heap[0][0] if self._heap else None
        heapq.heappush(self._heap, (when, next(self._order), entry))
        wake = self._wake
        if (earliest is None or when < earliest) and wake is not None and not wake.done():
            wake.set_result(None)  # sleep less: this one comes first
        return entry

    def after(self, delay: float, callback: Callable[[], None]) -> Entry:
        return self.at(self.now() + delay, callback)

    def cancelled_one(self) -> None:
        """Count a cancelled entry; rebuild the heap without them once they are most of it.
        (An entry cancelled long before it is due, a timer changed on every call or one of
        an activation collected, would otherwise stay until then: the heap would grow with
        every change. asyncio's loop does the same with its cancelled timer handles.)"""
        self._cancelled += 1
        heap = self._heap
        if self._cancelled > _MIN_CANCELLED_TO_REBUILD and 2 * self._cancelled > len(heap):
            kept = []
            for item in heap:
                if item[2].cancelled:
                    item[2].schedule = None
                else:
                    kept.append(item)
            heapq.heapify(kept)
            self._heap = kept
            self._cancelled = 0

    def _pop(self) -> Entry:
        entry = heapq.heappop(self._heap)[2]
        entry.schedule = None
        if entry.cancelled:
            self._cancelled -= 1
        return entry

    def due(self) -> bool:
        """Whether something is due and has not fired yet (tests wait until it has)."""
        heap = self._heap
        while heap and heap[0][2].cancelled:
            self._pop()
        return bool(heap) and heap[0][0] <= self.now()

    def __len__(self) -> int:
        return len(self._heap)

    async def run(self) -> None:
        """Fire what is due, sleep until the next is; forever (the silo cancels it)."""
        loop = asyncio.get_running_loop()
        while True:
            self._fire_due()
            self._wake = loop.create_future()
            if not self._heap:
                await self._wake
                continue
            sleeper = loop.create_task(self._sleep_until(self._heap[0][0]))
            try:
                await asyncio.wait((sleeper, self._wake), return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()

    async def _sleep_until(self, when: float) -> None:
        # The delay is measured when the sleep starts, not when it was asked for: a test may
        # advance its clock in between.
        delay = when - self.now()
        if delay > 0:
            await self.clock.sleep(delay)

    def _fire_due(self) -> None:
        now = self.now()
        while self._heap and self._heap[0][0] <= now:
            entry = self._pop()
            if entry.cancelled:
                continue
            try:
                entry.callback()
            except Exception as exc:  # one broken callback must not stop the others
                get_logger().error("schedule_callback_failed", error=repr(exc))
