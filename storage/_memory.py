"""``MemoryStorage``: a provider in a dict, for tests, with optional injected latency."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from raygrain.actors import ActorId, InconsistentStateError, StorageError
from raygrain.storage._events import MemoryEventLog
from raygrain.storage._provider import StateRecord, StateWrite
from raygrain.storage._reminders import MemoryReminders

__all__ = ["MemoryStorage"]


class MemoryStorage(MemoryReminders, MemoryEventLog):
    """Keeps records (and reminders, and the event log) in process memory. ``latency``
    (seconds) is awaited on every operation, to make interleavings and timeouts observable in
    tests."""

    def __init__(self, latency: float = 0.0) -> None:
        super().__init__()
        MemoryEventLog.__init__(self)
        self.latency = latency
        self._records: dict[ActorId, tuple[bytes | None, int]] = {}
        self._closed = False
        self.writes = 0  # number of successful write operations, for tests

    async def __aenter__(self) -> MemoryStorage:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def read(self, actor_id: ActorId) -> StateRecord:
        await self._pause()
        found = self._records.get(actor_id)
        return StateRecord(None, None) if found is None else StateRecord(found[0], str(found[1]))

    async def read_many(self, actor_ids: Sequence[ActorId]) -> list[StateRecord]:
        await self._pause()
        records = self._records
        return [
            StateRecord(None, None)
            if (found := records.get(actor_id)) is None
            else StateRecord(found[0], str(found[1]))
            for actor_id in actor_ids
        ]

    async def write(self, actor_id: ActorId, data: bytes, expected_etag: str | None) -> str:
        return (await self.write_many([StateWrite(actor_id, bytes(data), expected_etag)]))[0]

    async def clear(self, actor_id: ActorId, expected_etag: str | None) -> str:
        return (await self.write_many([StateWrite(actor_id, None, expected_etag)]))[0]

    async def write_many(self, writes: Sequence[StateWrite]) -> list[str]:
        await self._pause()
        # Check every ETag before touching anything: all or nothing, with no await in between.
        for w in writes:
            stored = self._etag(w.actor_id)
            if stored != w.expected_etag:
                raise InconsistentStateError(stored, w.expected_etag, str(w.actor_id))
        etags = []
        for w in writes:
            version = self._records.get(w.actor_id, (None, 0))[1] + 1
            self._records[w.actor_id] = (w.data, version)
            etags.append(str(version))
        self.writes += 1
        return etags

    async def aclose(self) -> None:
        self._closed = True

    def _etag(self, actor_id: ActorId) -> str | None:
        found = self._records.get(actor_id)
        return None if found is None else str(found[1])

    async def _pause(self) -> None:
        if self._closed:
            raise StorageError("MemoryStorage is closed")
        if self.latency:
            await asyncio.sleep(self.latency)
