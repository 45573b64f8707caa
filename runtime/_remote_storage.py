"""Storage over Ray: one storage server on the head node, reached by every silo in batches.

A multi-node cluster needs one store every silo can reach. ``StorageServer`` (a Ray actor)
fronts any local provider (SQLite by default); ``RemoteStorage`` is the provider silos use:
the operations issued in one event-loop iteration travel in one Ray call, and the server runs
them concurrently so that SQLite's group commit folds them into one transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import msgpack

from actors import ActorId, StorageError, decode_error, encode_error
from storage import StateRecord, StateWrite, StorageProvider, open_storage

__all__ = ["RemoteStorage", "StorageServerImpl"]


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


class StorageServerImpl:
    """The body of the storage server actor: executes batches of operations on a provider."""

    def __init__(self, spec: str) -> None:
        self.provider: StorageProvider = open_storage(spec)
        self.spec = spec
        self.operations = 0
        self.batches = 0

    async def execute(self, blob: bytes) -> bytes:
        operations = _unpack(blob)
        self.batches += 1
        self.operations += len(operations)
        results = await asyncio.gather(*(self._one(op) for op in operations))
        return _pack(results)

    async def _one(self, op: list[Any]) -> list[Any]:
        try:
            kind = op[0]
            if kind == "read":
                record = await self.provider.read(ActorId(op[1], op[2]))
                return [True, [record.data, record.etag]]
            if kind == "write":
                return [True, await self.provider.write(ActorId(op[1], op[2]), op[3], op[4])]
            if kind == "clear":
                return [True, await self.provider.clear(ActorId(op[1], op[2]), op[3])]
            if kind == "write_many":
                writes = [StateWrite(ActorId(t, k), d, e) for t, k, d, e in op[1]]
                return [True, await self.provider.write_many(writes)]
            raise StorageError(f"unknown storage operation {kind!r}")
        except Exception as exc:
            return [False, encode_error(exc, f"storage server ({self.spec})")]

    async def aclose(self) -> None:
        await self.provider.aclose()


_READ_ATTEMPTS = 3


class RemoteStorage:
    """A storage provider that forwards to the storage server actor, batching per loop turn."""

    def __init__(self, server: Any) -> None:
        self._server = server
        self._pending: list[tuple[list[Any], asyncio.Future[Any], int]] = []
        self._flush_scheduled = False
        self._closed = False

    async def read(self, actor_id: ActorId) -> StateRecord:
        data, etag = await self._submit(["read", actor_id.type_name, actor_id.key])
        return StateRecord(data, etag)

    async def write(self, actor_id: ActorId, data: bytes, expected_etag: str | None) -> str:
        op = ["write", actor_id.type_name, actor_id.key, data, expected_etag]
        return str(await self._submit(op))

    async def clear(self, actor_id: ActorId, expected_etag: str | None) -> str:
        return str(await self._submit(["clear", actor_id.type_name, actor_id.key, expected_etag]))

    async def write_many(self, writes: Sequence[StateWrite]) -> list[str]:
        rows = [[w.actor_id.type_name, w.actor_id.key, w.data, w.expected_etag] for w in writes]
        return [str(etag) for etag in await self._submit(["write_many", rows])]

    async def aclose(self) -> None:
        self._closed = True

    async def _submit(self, op: list[Any]) -> Any:
        if self._closed:
            raise StorageError("remote storage client is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue(op, future, 0)
        return await future

    def _queue(self, op: list[Any], future: asyncio.Future[Any], attempt: int) -> None:
        self._pending.append((op, future, attempt))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self._flush()))

    async def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._pending = self._pending, []
        try:
            results = _unpack(await self._server.execute.remote(_pack([op for op, _, _ in batch])))
        except Exception as exc:
            # Unreachable for a moment (Ray reconnecting after a node loss) or for good. A read
            # is tried again; a write may or may not have been applied, so its turn fails
            # (rolled back here; a write that did land fences this activation at its next one).
            loop = asyncio.get_running_loop()
            for op, future, attempt in batch:
                if future.done():
                    continue
                if op[0] == "read" and attempt < _READ_ATTEMPTS:
                    loop.call_later(0.1 * (attempt + 1), self._queue, op, future, attempt + 1)
                    continue
                future.set_exception(
                    StorageError(
                        f"storage server unreachable: {type(exc).__name__}: {exc}"
                        + (
                            ""
                            if op[0] == "read"
                            else "; the write may or may not have been applied"
                        )
                    )
                )
            return
        for (_, future, _), (ok, value) in zip(batch, results, strict=True):
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(decode_error(value))
