"""The reminder table: durable reminders, stored beside actor state by the same provider.

A row is one reminder of one actor: its first tick time, period, an ETag that changes when it
is registered again (so a stale handle can be refused), and the last occurrence delivered (so a
new owner after a failover or restart neither repeats it nor loses the ones missed). Rows are
found by actor, or by ranges of the placement ring (``ActorId.stable_hash``): a silo loads only
the reminders of the actors it owns. ``ReminderTable`` is an optional protocol beside
``StorageProvider``; ``MemoryStorage`` and ``SqliteStorage`` implement it.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

from raygrain.actors import ActorId, StaleReminderError

__all__ = ["MemoryReminders", "ReminderAck", "ReminderRecord", "ReminderTable", "in_ranges"]


@dataclass(frozen=True, slots=True)
class ReminderRecord:
    """One stored reminder. Times are seconds on the cluster's clock; ``last_tick`` is the
    scheduled time of the last occurrence delivered (None: none yet)."""

    actor_id: ActorId
    name: str
    first_tick: float
    period: float
    etag: str
    last_tick: float | None = None


@dataclass(frozen=True, slots=True)
class ReminderAck:
    """The occurrence ``tick`` of reminder ``name`` (as registered with ``etag``) was delivered."""

    actor_id: ActorId
    name: str
    etag: str
    tick: float


@runtime_checkable
class ReminderTable(Protocol):
    """Where reminders live. Ranges are ``(low, high]`` over the 64-bit ring (unsigned
    ``stable_hash`` values); a range that wraps is given as two."""

    async def upsert_reminder(
        self, actor_id: ActorId, name: str, first_tick: float, period: float
    ) -> ReminderRecord:
        """Register or replace: a new ETag, and no occurrence delivered yet."""
        ...

    async def remove_reminder(self, actor_id: ActorId, name: str, etag: str | None) -> bool:
        """Remove it; returns whether it existed. With ``etag``, only that registration:
        otherwise ``StaleReminderError``."""
        ...

    async def reminders_of(self, actor_id: ActorId) -> list[ReminderRecord]: ...

    async def reminders_in(self, ranges: Sequence[tuple[int, int]]) -> list[ReminderRecord]:
        """Every reminder of the actors whose ring hash falls in one of ``ranges``."""
        ...

    async def ack_reminders(self, acks: Sequence[ReminderAck]) -> None:
        """Record delivered occurrences (an ack for a replaced or removed reminder does
        nothing; a tick never goes backwards)."""
        ...


def in_ranges(value: int, lows: Sequence[int], ranges: Sequence[tuple[int, int]]) -> bool:
    """Whether ``value`` is in one of ``ranges`` (sorted, disjoint; ``lows`` their lows)."""
    index = bisect.bisect_left(lows, value) - 1
    return index >= 0 and ranges[index][0] < value <= ranges[index][1]


def stale(actor_id: ActorId, name: str, etag: str, stored: str | None) -> StaleReminderError:
    now = "was removed" if stored is None else "was registered again"
    return StaleReminderError(
        f"reminder {name!r} of {actor_id}: the handle ({etag}) is stale; it {now}"
    )


class MemoryReminders:
    """The reminder table in process memory (``MemoryStorage`` uses it)."""

    def __init__(self) -> None:
        self._reminders: dict[ActorId, dict[str, ReminderRecord]] = {}
        self._etags = itertools.count(1)

    async def _pause(self) -> None:
        """Every operation passes here first (``MemoryStorage``: closed check, latency)."""

    async def upsert_reminder(
        self, actor_id: ActorId, name: str, first_tick: float, period: float
    ) -> ReminderRecord:
        await self._pause()
        record = ReminderRecord(actor_id, name, first_tick, period, f"r{next(self._etags)}")
        self._reminders.setdefault(actor_id, {})[name] = record
        return record

    async def remove_reminder(self, actor_id: ActorId, name: str, etag: str | None) -> bool:
        await self._pause()
        found = self._reminders.get(actor_id, {}).get(name)
        if etag is not None and (found is None or found.etag != etag):
            raise stale(actor_id, name, etag, None if found is None else found.etag)
        if found is None:
            return False
        del self._reminders[actor_id][name]
        if not self._reminders[actor_id]:
            del self._reminders[actor_id]
        return True

    async def reminders_of(self, actor_id: ActorId) -> list[ReminderRecord]:
        await self._pause()
        return list(self._reminders.get(actor_id, {}).values())

    async def reminders_in(self, ranges: Sequence[tuple[int, int]]) -> list[ReminderRecord]:
        await self._pause()
        ordered = sorted(ranges)
        lows = [low for low, _ in ordered]
        return [
            record
            for actor_id, records in self._reminders.items()
            if in_ranges(actor_id.stable_hash(), lows, ordered)
            for record in records.values()
        ]

    async def ack_reminders(self, acks: Sequence[ReminderAck]) -> None:
        await self._pause()
        for ack in acks:
            found = self._reminders.get(ack.actor_id, {}).get(ack.name)
            if (
                found is not None
                and found.etag == ack.etag
                and (found.last_tick is None or found.last_tick < ack.tick)
            ):
                self._reminders[ack.actor_id][ack.name] = replace(found, last_tick=ack.tick)
