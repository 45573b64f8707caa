"""Storage over Ray: one storage server on the head node, reached by every silo in batches.

A multi-node cluster needs one store every silo can reach. ``StorageServer`` (a Ray actor)
fronts any local provider (SQLite by default); ``RemoteStorage`` is the provider silos use:
the operations issued in one event-loop iteration travel in one Ray call, and the server runs
them concurrently so that SQLite's group commit folds them into one transaction.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Sequence
from typing import Any

from raygrain.actors import ActorId, StorageError, decode, decode_error, encode, encode_error
from raygrain.runtime.kernel import id_from_wire, id_to_wire, pack, unpack
from raygrain.storage import (
    Appended,
    EncodedEvents,
    EventLog,
    NewEvent,
    ReminderAck,
    ReminderRecord,
    ReminderTable,
    StateRecord,
    StateWrite,
    StorageProvider,
    StoredEvent,
    checked_events,
    open_storage,
    tell_written,
)

__all__ = ["RemoteStorage", "StorageServerImpl"]


class StorageServerImpl:
    """The body of the storage server actor: executes batches of operations on a provider."""

    def __init__(self, spec: str) -> None:
        self.provider: StorageProvider = open_storage(spec)
        self.spec = spec
        self.operations = 0
        self.batches = 0

    async def execute(self, blob: bytes) -> bytes:
        operations = unpack(blob)
        self.batches += 1
        self.operations += len(operations)
        results = await asyncio.gather(*(self._one(op) for op in operations))
        return pack(results)

    async def _one(self, op: list[Any]) -> list[Any]:
        try:
            kind = op[0]
            if kind == "read":
                record = await self.provider.read(id_from_wire(op[1], op[2]))
                return [True, [record.data, record.etag]]
            if kind == "write":
                return [True, await self.provider.write(id_from_wire(op[1], op[2]), op[3], op[4])]
            if kind == "clear":
                return [True, await self.provider.clear(id_from_wire(op[1], op[2]), op[3])]
            if kind == "write_many":
                writes = [StateWrite(id_from_wire(t, k), d, e) for t, k, d, e in op[1]]
                return [True, await self.provider.write_many(writes)]
            if kind.startswith("reminders_"):
                return [True, await self._reminders(kind, op)]
            if kind.startswith("events_"):
                return [True, await self._events(kind, op)]
            raise StorageError(f"unknown storage operation {kind!r}")
        except Exception as exc:
            return [False, encode_error(exc, f"storage server ({self.spec})")]

    async def _reminders(self, kind: str, op: list[Any]) -> Any:
        table = self.provider
        if not isinstance(table, ReminderTable):
            raise StorageError(f"the storage server's provider ({self.spec}) has no reminder table")
        if kind == "reminders_upsert":
            record = await table.upsert_reminder(id_from_wire(op[1], op[2]), *op[3:6])
            return _record_to_wire(record)
        if kind == "reminders_remove":
            return await table.remove_reminder(id_from_wire(op[1], op[2]), op[3], op[4])
        if kind == "reminders_of":
            return [_record_to_wire(r) for r in await table.reminders_of(id_from_wire(*op[1:3]))]
        if kind == "reminders_in":
            ranges = [(low, high) for low, high in op[1]]
            return [_record_to_wire(r) for r in await table.reminders_in(ranges)]
        if kind == "reminders_ack":
            acks = [ReminderAck(id_from_wire(t, k), n, e, tick) for t, k, n, e, tick in op[1]]
            await table.ack_reminders(acks)
            return None
        raise StorageError(f"unknown storage operation {kind!r}")

    async def _events(self, kind: str, op: list[Any]) -> Any:
        log = self.provider
        if not isinstance(log, EventLog):
            raise StorageError(f"the storage server's provider ({self.spec}) has no event log")
        if kind == "events_append":
            events = [NewEvent(t, decode(data), i) for t, data, i in op[4]]
            appended = await log.append(op[1], op[2], op[3], events)
            return [appended.version, appended.position]
        if kind == "events_stream":
            return [_event_to_wire(e) for e in await log.read_stream(op[1], op[2], op[3])]
        if kind == "events_category":
            return [_event_to_wire(e) for e in await log.read_category(op[1], op[2], op[3])]
        if kind == "events_head":
            return await log.head(op[1])
        raise StorageError(f"unknown storage operation {kind!r}")

    async def aclose(self) -> None:
        await self.provider.aclose()


# Event data crosses as the raygrain codec's bytes (the storage server decodes it to store it,
# so a value of a class the server cannot import fails there with SerializationError).
def _event_to_wire(event: StoredEvent) -> list[Any]:
    return [
        event.stream,
        event.category,
        event.version,
        event.position,
        event.type,
        encode(event.data),
        event.event_id,
        event.recorded_at,
    ]


def _event_from_wire(row: list[Any]) -> StoredEvent:
    stream, category, version, position, type_, data, event_id, recorded_at = row
    return StoredEvent(
        stream, category, version, position, type_, decode(data), event_id, recorded_at
    )


def _record_to_wire(record: ReminderRecord) -> list[Any]:
    return [
        *id_to_wire(record.actor_id),
        record.name,
        record.first_tick,
        record.period,
        record.etag,
        record.last_tick,
    ]


def _record_from_wire(row: list[Any]) -> ReminderRecord:
    type_name, key, name, first_tick, period, etag, last_tick = row
    return ReminderRecord(id_from_wire(type_name, key), name, first_tick, period, etag, last_tick)


# Safe to send again. (An append is too, being idempotent on its event ids, but its caller
# retries it, and knows the outcome was unknown.)
_READS = frozenset(
    {"read", "reminders_of", "reminders_in", "events_stream", "events_category", "events_head"}
)

# A read is tried again for about 10 s (0.1 s doubling, at most 1 s apart): long enough to ride
# out Ray restarting the server's process (4-7.5 s measured on a 2-core machine), so an
# activation waits for its state instead of failing. Writes are never retried here: their fate
# is unknown once a call fails.
_READ_ATTEMPTS = 13
_READ_RETRY_MAX_DELAY = 1.0


# Who waits for an operation's result: a caller awaiting a future, or a ``queue_write`` callback.
_Sink = asyncio.Future[Any] | Callable[[str | Exception], object]


class RemoteStorage:
    """A storage provider that forwards to the storage server actor, batching per loop turn.
    It takes queued writes (``storage.QueuedWrites``): a silo's changing turns then end when
    their batch's answer arrives, with no task waiting for each."""

    def __init__(self, server: Any) -> None:
        self._server = server
        self._pending: list[tuple[list[Any], _Sink, int]] = []
        self._flush_scheduled = False
        self._flushes: set[asyncio.Future[None]] = set()
        self._closed = False

    async def read(self, actor_id: ActorId) -> StateRecord:
        data, etag = await self._submit(["read", *id_to_wire(actor_id)])
        return StateRecord(data, etag)

    async def write(self, actor_id: ActorId, data: bytes, expected_etag: str | None) -> str:
        return str(await self._submit(["write", *id_to_wire(actor_id), data, expected_etag]))

    async def clear(self, actor_id: ActorId, expected_etag: str | None) -> str:
        return str(await self._submit(["clear", *id_to_wire(actor_id), expected_etag]))

    async def write_many(self, writes: Sequence[StateWrite]) -> list[str]:
        rows = [[*id_to_wire(w.actor_id), w.data, w.expected_etag] for w in writes]
        return [str(etag) for etag in await self._submit(["write_many", rows])]

    # -- the reminder table (storage.ReminderTable) ----------------------------------------------

    async def upsert_reminder(
        self, actor_id: ActorId, name: str, first_tick: float, period: float
    ) -> ReminderRecord:
        row = await self._submit(
            ["reminders_upsert", *id_to_wire(actor_id), name, first_tick, period]
        )
        return _record_from_wire(row)

    async def remove_reminder(self, actor_id: ActorId, name: str, etag: str | None) -> bool:
        return bool(await self._submit(["reminders_remove", *id_to_wire(actor_id), name, etag]))

    async def reminders_of(self, actor_id: ActorId) -> list[ReminderRecord]:
        rows = await self._submit(["reminders_of", *id_to_wire(actor_id)])
        return [_record_from_wire(row) for row in rows]

    async def reminders_in(self, ranges: Sequence[tuple[int, int]]) -> list[ReminderRecord]:
        rows = await self._submit(["reminders_in", [list(r) for r in ranges]])
        return [_record_from_wire(row) for row in rows]

    async def ack_reminders(self, acks: Sequence[ReminderAck]) -> None:
        rows = [[*id_to_wire(a.actor_id), a.name, a.etag, a.tick] for a in acks]
        if rows:
            await self._submit(["reminders_ack", rows])

    # -- the event log (storage.EventLog) ---------------------------------------------------------

    async def append(
        self,
        stream: str,
        category: str,
        expected_version: int | None,
        events: Sequence[NewEvent] | EncodedEvents,
    ) -> Appended:
        # (Checked here too: bad input is refused at the call, named, as by the other logs.)
        encoded = checked_events(stream, category, expected_version, events)
        rows = [list(row) for row in encoded]
        version, position = await self._submit(
            ["events_append", stream, category, expected_version, rows]
        )
        return Appended(int(version), int(position))

    async def read_stream(
        self, stream: str, from_version: int = 1, limit: int | None = None
    ) -> list[StoredEvent]:
        rows = await self._submit(["events_stream", stream, from_version, limit])
        return [_event_from_wire(row) for row in rows]

    async def read_category(
        self, category: str, after_position: int = 0, limit: int = 1000
    ) -> list[StoredEvent]:
        rows = await self._submit(["events_category", category, after_position, limit])
        return [_event_from_wire(row) for row in rows]

    async def head(self, category: str) -> int:
        return int(await self._submit(["events_head", category]))

    def queue_write(
        self,
        actor_id: ActorId,
        data: bytes,
        expected_etag: str | None,
        done: Callable[[str | Exception], object],
    ) -> None:
        """``write`` without a coroutine (see ``storage.QueuedWrites``): ``done`` gets the new
        ETag or the error once the batch carrying the write is answered."""
        self._check_open()
        self._queue(["write", *id_to_wire(actor_id), data, expected_etag], done, 0)

    async def aclose(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("remote storage client is closed")

    async def _submit(self, op: list[Any]) -> Any:
        self._check_open()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue(op, future, 0)
        return await future

    def _queue(self, op: list[Any], sink: _Sink, attempt: int) -> None:
        loop = asyncio.get_running_loop()
        self._pending.append((op, sink, attempt))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            # In a context of its own: ``queue_write`` callbacks run in the flush, and must not
            # see the variables of whichever turn happened to queue first.
            loop.call_soon(self._start_flush, context=contextvars.Context())

    def _start_flush(self) -> None:
        flush = asyncio.ensure_future(self._flush())
        self._flushes.add(flush)  # (the loop keeps only a weak reference to a task)
        flush.add_done_callback(self._flush_ended)

    def _flush_ended(self, flush: asyncio.Future[None]) -> None:
        self._flushes.discard(flush)
        if flush.cancelled() and self._flush_scheduled:
            # Cancelled before it ran (the loop is shutting down): nobody took the queue.
            self._flush_scheduled = False
            batch, self._pending = self._pending, []
            for _, sink, _ in batch:
                _settle(sink, StorageError("storage call cancelled before it was sent"))

    async def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._pending = self._pending, []
        try:
            results = unpack(await self._server.execute.remote(pack([op for op, _, _ in batch])))
        except asyncio.CancelledError:
            # The loop is shutting down: tell whoever waits (a queued write's turn would
            # otherwise never end), then stop.
            for _, sink, _ in batch:
                _settle(
                    sink,
                    StorageError(
                        "storage call cancelled; a write may or may not have been applied"
                    ),
                )
            raise
        except Exception as exc:
            # Unreachable for a moment (Ray reconnecting after a node loss) or for good. A read
            # is tried again; a write may or may not have been applied, so its turn fails
            # (rolled back here; a write that did land fences this activation at its next one).
            loop = asyncio.get_running_loop()
            for op, sink, attempt in batch:
                if op[0] in _READS and attempt < _READ_ATTEMPTS:
                    delay = min(0.1 * 2**attempt, _READ_RETRY_MAX_DELAY)
                    loop.call_later(delay, self._queue, op, sink, attempt + 1)
                    continue
                _settle(
                    sink,
                    StorageError(
                        f"storage server unreachable: {type(exc).__name__}: {exc}"
                        + (
                            ""
                            if op[0] in _READS
                            else "; the write may or may not have been applied"
                        )
                    ),
                )
            return
        for (_, sink, _), (ok, value) in zip(batch, results, strict=True):
            _settle(sink, value if ok else decode_error(value))


def _settle(sink: _Sink, outcome: Any) -> None:
    """Hand an operation's result (or error) to whoever waits for it."""
    if isinstance(sink, asyncio.Future):
        if sink.done():  # the caller was cancelled
            return
        if isinstance(outcome, BaseException):
            sink.set_exception(outcome)
        else:
            sink.set_result(outcome)
        return
    tell_written(sink, outcome if isinstance(outcome, Exception) else str(outcome))
