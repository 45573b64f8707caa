"""The sweeper: durable delivery that a crash interrupted is finished from the log.

A publish is acknowledged once its events are in the log; the hub's fan-out that follows is
in memory, and so is a consumer's cursor. When a silo dies between the two, or a consumer's
activation dies before it consumed what it was sent, only the log knows. So for each durable
namespace (remembered in a record of the state store at its first publish) the silo owning
the namespace's sweep id reads the log's category from a stored checkpoint, asks each
stream's hub to bring every consumer up to the stream's last version read (activating the
consumers if need be), and only then moves the checkpoint on. Steady state costs one empty
category read per namespace per ``sweep_period``.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from raygrain.actors import InconsistentStateError, StreamId, decode, encode
from raygrain.runtime.kernel import get_logger
from raygrain.runtime.streams._log import event_log, parse_log_name, record_id
from raygrain.runtime.streams._service import StreamServiceBase

__all__ = ["Sweeper"]

_PAGE = 1_000
_NAMESPACES = record_id("namespaces", "durable")


class StreamService(StreamServiceBase, Protocol):
    """What the sweeper uses of the silo's stream service (``_extension.StreamService``)."""

    async def sync(self, stream: StreamId, version: int) -> bool: ...


class Sweeper:
    def __init__(self, service: StreamService) -> None:
        self.service = service
        self._known: set[str] = set()
        self.sweeps = 0  # completed sweeps (tests wait on them)

    async def know(self, namespace: str) -> None:
        """Remember that ``namespace`` has durable streams (once per silo and namespace)."""
        if namespace in self._known:
            return
        storage = self.service.storage
        for _ in range(10):  # a few racing silos: each retry sees the others' writes
            record = await storage.read(_NAMESPACES)
            names = set(decode(record.data)) if record.data else set()
            if namespace in names:
                break
            try:
                await storage.write(_NAMESPACES, encode(sorted(names | {namespace})), record.etag)
                break
            except InconsistentStateError:
                continue
        self._known.add(namespace)

    async def run(self) -> None:
        while True:
            await self.service.silo.clock.sleep(self.service.settings.sweep_period)
            try:
                await self.sweep()
            except Exception as exc:  # keep sweeping: the next round retries
                get_logger().warning(
                    "stream_sweep_failed", silo=self.service.silo.name, error=repr(exc)
                )

    async def sweep(self) -> None:
        """One round over the namespaces this silo owns."""
        silo = self.service.silo
        if event_log(self.service.storage) is None or not len(silo.membership.ring):
            return  # (no log; or the cluster is shutting down: no silo owns anything)
        record = await self.service.storage.read(_NAMESPACES)
        for namespace in decode(record.data) if record.data else []:
            if len(silo.membership.ring) and silo.hosts(record_id("sweep", namespace)):
                await self._sweep(namespace)
        self.sweeps += 1

    async def _sweep(self, namespace: str) -> None:
        storage = self.service.storage
        log = event_log(storage)
        assert log is not None
        checkpoint_id = record_id("sweep", namespace)
        record = await storage.read(checkpoint_id)
        checkpoint = decode(record.data) if record.data else 0
        page = await log.read_category(namespace, checkpoint, _PAGE)
        if not page:
            return
        heads: dict[str, int] = {}
        for stored in page:
            heads[stored.stream] = max(heads.get(stored.stream, 0), stored.version)
        synced = await asyncio.gather(
            *(self.service.sync(parse_log_name(name), head) for name, head in heads.items())
        )
        if all(synced):
            await storage.write(checkpoint_id, encode(page[-1].position), record.etag)
