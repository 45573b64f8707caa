"""The write queue of a group-committing provider (SQLite, PostgreSQL): its entries (a caller's
write or atomic group waiting on a future, or a ``queue_write`` waiting with a callback) and the
``WriteQueue`` base that puts them on the queue, which each provider's committer then drains."""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from raygrain.actors import ActorId
from raygrain.storage._provider import StateWrite, WriteTimer, tell_written

__all__ = [
    "MIN_SPLIT",
    "Pending",
    "PendingWrite",
    "QueuedWrite",
    "WriteQueue",
    "copied",
    "start_committer",
    "write_count",
]

# A batch takes at least this many records when there are (or half the queue, if more).
MIN_SPLIT = 64


@dataclass(slots=True)
class PendingWrite:
    """One caller's write (or atomic ``write_many`` group) waiting for a batch to commit it,
    the caller awaiting ``result``."""

    writes: tuple[StateWrite, ...]
    result: asyncio.Future[list[str]]

    def dropped(self) -> bool:
        """Whether its caller was cancelled (before the write started: it is dropped)."""
        return self.result.done()

    def settle(self, outcome: list[str] | Exception) -> None:
        if self.result.done():
            return  # a cancelled caller has nobody to tell
        if isinstance(outcome, Exception):
            self.result.set_exception(outcome)
        else:
            self.result.set_result(outcome)


@dataclass(slots=True)
class QueuedWrite:
    """A ``queue_write``: one write, and the callback that wants its ETag. A write in its own
    right (its fields are a ``StateWrite``'s), so that a queued write is one object: thousands
    wait at a time, and each object they keep alive costs garbage collection time."""

    actor_id: ActorId
    data: bytes
    expected_etag: str | None
    done: Callable[[str | Exception], object]
    # A timed write's (``queue_timed_write``): its timer, and when it was queued.
    timer: WriteTimer | None = None
    queued: float = 0.0

    @property
    def writes(self) -> tuple[QueuedWrite]:
        return (self,)

    def dropped(self) -> bool:
        return False

    def settle(self, outcome: list[str] | Exception) -> None:
        """Tell ``done`` its outcome (a committed one's timer was told by ``time_batch``; a
        failure's is told here, whichever way the write failed)."""
        if isinstance(outcome, Exception):
            if self.timer is not None:
                try:
                    self.timer.failed(perf_counter() - self.queued, outcome)
                except Exception as exc:
                    timer_failed(exc)
            tell_written(self.done, outcome)
        else:
            tell_written(self.done, outcome[0])


Pending = PendingWrite | QueuedWrite


def time_batch(batch: list[Pending], outcomes: list[Any]) -> None:
    """Tell the timers of ``batch``'s timed writes that committed how long each took (before
    ``settle``; failures are timed by ``settle``), one call per timer for the whole batch."""
    now = perf_counter()
    # (Comprehensions, not a loop: this runs for every write of every batch.)
    timed = [
        (pending.timer, now - pending.queued)
        for pending, outcome in zip(batch, outcomes, strict=True)
        if type(outcome) is list and type(pending) is QueuedWrite and pending.timer is not None
    ]
    for each in {timer for timer, _ in timed}:  # (one, unless silos share the provider)
        try:
            each.written([seconds for timer, seconds in timed if timer is each])
        except Exception as exc:
            timer_failed(exc)


def timer_failed(error: Exception) -> None:
    """A write timer raised (its owner's bug): reported to the event loop; the writes are
    still told their outcomes, and the rest of the batch its timings."""
    asyncio.get_running_loop().call_exception_handler(
        {"message": "a queued write's timer failed", "exception": error}
    )


def write_count(batch: list[Pending]) -> int:
    """How many writes ``batch`` holds: one per queued write, a pending group's own count
    (without building a queued write's one-write tuple: this runs on every batch)."""
    return sum([1 if type(pending) is QueuedWrite else len(pending.writes) for pending in batch])


class WriteQueue:
    """The queueing half of a group-committing provider. ``queue_write`` and ``_queue`` (which
    ``write``, ``clear`` and ``write_many`` await) put entries on ``_pending``; the provider's
    ``_start_committer`` makes sure a committer task drains it, and ``_check_not_closed`` refuses
    a closed store."""

    _pending: deque[Pending]
    _timed = False  # whether a timed write was ever queued (``_settle_batch`` times them)
    _wraps_queue_write = False  # a subclass overrides queue_write (see queue_timed_write)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._wraps_queue_write = cls.queue_write is not WriteQueue.queue_write

    def _check_not_closed(self) -> None:
        raise NotImplementedError

    def _start_committer(self) -> None:
        raise NotImplementedError

    def queue_write(
        self,
        actor_id: ActorId,
        data: bytes,
        expected_etag: str | None,
        done: Callable[[str | Exception], object],
    ) -> None:
        """``write`` without a coroutine (see ``storage.QueuedWrites``): queue the write for
        the next batch; ``done`` gets the new ETag once the batch committed, or the error
        (``InconsistentStateError``, ``StorageError``), on the event loop, exactly once."""
        self._check_not_closed()
        self._start_committer()  # first: if it fails (no running loop), nothing was queued
        self._pending.append(QueuedWrite(actor_id, bytes(data), expected_etag, done))

    def queue_timed_write(
        self,
        timer: WriteTimer,
        actor_id: ActorId,
        data: bytes,
        expected_etag: str | None,
        done: Callable[[str | Exception], object],
    ) -> None:
        """``queue_write``, telling ``timer`` how long the write took (``TimedWrites``)."""
        if self._wraps_queue_write:
            self._queue_timed_through_wrapper(timer, actor_id, data, expected_etag, done)
            return
        self._check_not_closed()
        self._start_committer()
        self._timed = True
        self._pending.append(
            QueuedWrite(actor_id, bytes(data), expected_etag, done, timer, perf_counter())
        )

    def _queue_timed_through_wrapper(
        self,
        timer: WriteTimer,
        actor_id: ActorId,
        data: bytes,
        expected_etag: str | None,
        done: Callable[[str | Exception], object],
    ) -> None:
        # A subclass's own queue_write (fault injection, a check) must see every queued write,
        # timed or not: time this one through its callback.
        queued = perf_counter()

        def timed(outcome: str | Exception) -> object:
            try:
                if isinstance(outcome, Exception):
                    timer.failed(perf_counter() - queued, outcome)
                else:
                    timer.written([perf_counter() - queued])
            except Exception as exc:
                timer_failed(exc)
            return done(outcome)

        self.queue_write(actor_id, data, expected_etag, timed)

    def _settle_batch(self, batch: list[Pending], outcomes: list[Any]) -> None:
        """Tell each entry of a committed batch its outcome, the timed writes' timers first."""
        if self._timed:
            time_batch(batch, outcomes)
        for pending, outcome in zip(batch, outcomes, strict=True):
            pending.settle(outcome)

    def _queue(self, group: tuple[StateWrite, ...]) -> asyncio.Future[list[str]]:
        self._check_not_closed()
        result: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._pending.append(PendingWrite(group, result))
        self._start_committer()
        return result

    def _batch_limit(self, max_batch: int) -> int:
        """How many records the next batch takes: the front half of the queue (at least
        ``MIN_SPLIT``, at most ``max_batch``), so that the next batch gathers while this one
        commits, keeping the pipeline full instead of alternating between an idle event loop
        and an idle database."""
        return min(max_batch, max(MIN_SPLIT, (len(self._pending) + 1) // 2))


def copied(writes: Iterable[StateWrite]) -> tuple[StateWrite, ...]:
    """The writes with their data copied now: a caller may reuse a bytearray while its write
    waits in the queue."""
    return tuple(
        StateWrite(w.actor_id, None if w.data is None else bytes(w.data), w.expected_etag)
        for w in writes
    )


def start_committer(run: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
    """A committer task running ``run()``, in a context of its own: ``queue_write`` callbacks
    run in the committer, and must not see the variables of whichever caller started it."""
    loop = asyncio.get_running_loop()  # (before making a coroutine that would be lost)
    return contextvars.Context().run(loop.create_task, run())
