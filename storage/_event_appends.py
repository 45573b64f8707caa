"""The append queue the SQL event logs share (storage/_sqlite_events.py, _postgres_events.py).

``append`` checks and encodes the events in the caller, queues them and waits; one committer
task per store takes the front half of what is pending (at least ``MIN_SPLIT`` appends, at most
``MAX_BATCH`` events: the rest gathers while it commits, as the state's group commit does, see
storage/_pending.py) and hands it to the log's ``_commit_batch``, which settles each append with
its own outcome. A caller cancelled before its batch started is left out; one cancelled after
may still have committed (a retry with the same event ids returns that append's result).
``queue_append`` (``QueuedAppends``) queues the same way with a callback instead of a waiting
caller.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from raygrain.actors import StorageError
from raygrain.storage._events import (
    Appended,
    EncodedEvents,
    NewEvent,
    checked_events,
)
from raygrain.storage._pending import MIN_SPLIT

__all__ = ["MAX_BATCH", "AppendQueue", "PendingAppend", "settle"]

MAX_BATCH = 2000  # events in one transaction
# And bytes of event data in one (an append larger goes alone): PostgreSQL refuses a message
# over 1 GB, so an unbounded batch of big events failed for ever, its outcome unknown.
MAX_BATCH_BYTES = 64 * 1024 * 1024


@dataclass(slots=True)
class PendingAppend:
    stream: str
    category: str
    expected_version: int | None
    events: list[tuple[str, bytes, str]]  # (type, data, event id)
    # The waiting caller's future (``append``), or the callback of ``queue_append``.
    result: asyncio.Future[Appended] | Callable[[Appended | Exception], object]
    nbytes: int  # of the events' data


def settle(pending: PendingAppend, outcome: Appended | Exception) -> None:
    result = pending.result
    if not isinstance(result, asyncio.Future):
        pending.result = _told  # exactly once
        try:
            result(outcome)
        except Exception as exc:  # the caller's bug: the rest of the batch is still told
            asyncio.get_running_loop().call_exception_handler(
                {"message": "a queued append's callback failed", "exception": exc}
            )
    elif not result.done():
        if isinstance(outcome, Exception):
            result.set_exception(outcome)
        else:
            result.set_result(outcome)


def _told(outcome: Appended | Exception) -> None:
    """What a callback-settled append holds once told (a second settle does nothing)."""


class AppendQueue:
    """``append`` and its committer; a subclass provides ``_commit_batch`` and
    ``_check_not_closed``."""

    _appends: deque[PendingAppend] | None = None
    _append_committer: asyncio.Task[None] | None = None

    if TYPE_CHECKING:  # provided by the log and its store

        def _check_not_closed(self) -> None: ...

        async def _commit_batch(self, batch: list[PendingAppend]) -> None:
            """Commit ``batch`` and settle each of its appends (``settle``)."""

    async def append(
        self,
        stream: str,
        category: str,
        expected_version: int | None,
        events: Sequence[NewEvent] | EncodedEvents,
    ) -> Appended:
        """Queue the append for the next batch; return once the batch committed. If the caller
        is cancelled after its batch started, the append may still commit (retry it: the
        event ids make the retry return that append's result)."""
        result: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        self._queue_append(stream, category, expected_version, events, result)
        return await result

    # Whether the store refuses some names (``_check_names``): not called per append otherwise.
    _checks_names = False

    def _check_names(
        self, stream: str, category: str, encoded: Sequence[tuple[str, bytes, str]]
    ) -> None:
        """Refuse names this store cannot hold (raise ``InvalidEventError``); called only
        when ``_checks_names``."""

    def _queue_append(
        self,
        stream: str,
        category: str,
        expected_version: int | None,
        events: Sequence[NewEvent] | EncodedEvents,
        done: asyncio.Future[Appended] | Callable[[Appended | Exception], object],
    ) -> None:
        """``append`` with a callback (``QueuedAppends``): bad input raises here; ``done``
        gets the outcome once the batch committed. ``events`` may come encoded already.
        (``append`` queues its future as ``done``.)"""
        encoded = checked_events(stream, category, expected_version, events)
        if self._checks_names:
            self._check_names(stream, category, encoded)
        self._check_not_closed()
        if self._appends is None:
            self._appends = deque()
        nbytes = (
            len(encoded[0][1]) if len(encoded) == 1 else sum(len(event[1]) for event in encoded)
        )
        self._appends.append(
            PendingAppend(stream, category, expected_version, encoded, done, nbytes)
        )
        if self._append_committer is None:
            # In a context of its own, like the state's committer: callers' variables stay theirs.
            self._append_committer = contextvars.Context().run(
                asyncio.get_running_loop().create_task, self._commit_appends()
            )

    # (The same function, not a method calling it: one frame per queued append, not two; a
    # subclass overriding queue_append still leaves ``append`` as it was.)
    queue_append = _queue_append

    async def _drain_appends(self) -> None:
        """Let queued appends commit (``aclose`` calls it before closing the connections)."""
        if self._append_committer is not None:
            await asyncio.wait({self._append_committer})

    async def _commit_appends(self) -> None:
        queue = self._appends
        assert queue is not None
        try:
            while queue:
                batch: list[PendingAppend] = []
                size = 0
                # The front half: the next batch's callers queue while this one commits,
                # instead of the event loop and the database taking turns being idle (with
                # 1,000 writers in one batch, appends ran at 0.6x the state's writes).
                limit = min(MAX_BATCH, max(MIN_SPLIT, (len(queue) + 1) // 2))
                nbytes = 0
                while queue:
                    pending = queue[0]
                    count = len(pending.events)
                    if batch and (
                        size + count > limit or nbytes + pending.nbytes > MAX_BATCH_BYTES
                    ):
                        break
                    queue.popleft()
                    result = pending.result
                    if not (isinstance(result, asyncio.Future) and result.done()):
                        batch.append(pending)  # (else its caller was cancelled before it started)
                        size += count
                        nbytes += pending.nbytes
                if batch:
                    try:
                        await self._commit_batch(batch)
                    except BaseException as exc:
                        # (A log settles its batch's failures itself; whatever escaped it,
                        # a bug or a cancellation, still ends every append, its outcome
                        # unknown: a caller or a turn waiting for it would wait for ever.)
                        for pending in batch:
                            settle(pending, StorageError(f"appending failed: {exc!r}"))
                        if not isinstance(exc, Exception):
                            raise
        finally:
            self._append_committer = None
            while queue:
                settle(queue.popleft(), StorageError(f"{self!r} stopped committing events"))
