"""The queue entries of a group-committing provider (SQLite, PostgreSQL): a caller's write or
atomic group waiting on a future, or a ``queue_write`` waiting with a callback."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from raygrain.actors import ActorId
from raygrain.storage._provider import StateWrite, tell_written

__all__ = ["Pending", "PendingWrite", "QueuedWrite"]


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

    @property
    def writes(self) -> tuple[QueuedWrite]:
        return (self,)

    def dropped(self) -> bool:
        return False

    def settle(self, outcome: list[str] | Exception) -> None:
        tell_written(self.done, outcome if isinstance(outcome, Exception) else outcome[0])


Pending = PendingWrite | QueuedWrite
