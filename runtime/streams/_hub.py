"""The stream hub: what the ring owner of a stream does for it.

Every publish, subscribe and unsubscribe of a stream goes to one silo, the owner of the
stream's hub id on the placement ring, so its subscription list has one writer and its
events one order. A durable publish appends to the event log and is acknowledged once the
append is; a fast one is not stored. Either way the hub then fans the events out: to the
implicit consumers of the namespace (the actor with the stream's key, per consuming class) and
to the explicit subscriptions (a record of the state store, cached here), in one message per
silo hosting consumers.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Awaitable
from typing import Any, Protocol

from raygrain.actors import ActorId, StreamId, decode, encode
from raygrain.runtime.kernel import get_logger, id_from_wire
from raygrain.runtime.streams._log import new_event, record_id, require_log
from raygrain.runtime.streams._service import StreamServiceBase
from raygrain.runtime.streams._sweeper import Sweeper

__all__ = ["HUB", "Hubs", "hub_id"]

HUB = "$streams.hub"
MAX_HUBS = 100_000  # the streams whose hub state a silo keeps in memory, at most
_PAGE = 1_000
# A consumer on the wire: [type name, key, subscription, start position].
WireConsumer = list[Any]


def hub_id(stream: StreamId) -> ActorId:
    return ActorId(HUB, stream.log_name())


class _Hub:
    __slots__ = ("by_silo", "etag", "head", "ready", "subscriptions", "writing")

    def __init__(self) -> None:
        self.writing = asyncio.Lock()  # subscription changes, one at a time (one ETag chain)
        self.subscriptions: list[WireConsumer] = []  # [sub id, type, key, start]
        self.etag: str | None = None
        self.head: int | None = None  # the stream's last version, once known
        self.ready: asyncio.Future[None] | None = None
        self.by_silo: dict[str, list[WireConsumer]] | None = None


class StreamService(StreamServiceBase, Protocol):
    """What hubs use of the silo's stream service (``_extension.StreamService``)."""

    implicit: dict[str, tuple[str, ...]]  # namespace -> consuming type names

    @property
    def sweeper(self) -> Sweeper: ...

    def send(self, target: ActorId, method: str, args: list[Any]) -> None: ...

    def ask(self, target: ActorId, method: str, args: list[Any]) -> Awaitable[Any]: ...

    def deliver(
        self,
        stream: StreamId,
        head: int,
        events: list[tuple[int, bytes, str]],
        consumers: list[list[Any]],
        hops: int,
        placed: bool = False,
    ) -> None: ...


class Hubs:
    """The hubs of the streams this silo owns (their caches are dropped when the view
    changes: another silo may have owned a stream meanwhile)."""

    def __init__(self, service: StreamService) -> None:
        self.service = service
        self._hubs: dict[str, _Hub] = {}

    def clear(self) -> None:
        self._hubs.clear()

    def _forget_oldest(self) -> None:
        """Keep the cache bounded: drop the oldest hub that is idle (a dropped hub reloads
        its subscriptions on its stream's next message)."""
        for name, hub in self._hubs.items():
            if hub.ready is None and not hub.writing.locked():
                del self._hubs[name]
                return

    async def _hub(self, stream: StreamId) -> _Hub:
        name = stream.log_name()
        hub = self._hubs.get(name)
        if hub is None:
            if len(self._hubs) >= MAX_HUBS:
                self._forget_oldest()
            hub = self._hubs[name] = _Hub()
            hub.ready = asyncio.get_running_loop().create_future()
            try:
                record = await self.service.storage.read(record_id("subscriptions", name))
            except BaseException as exc:
                del self._hubs[name]
                hub.ready.set_exception(exc)
                hub.ready.exception()  # (retrieved: the waiters re-raise it)
                raise
            hub.etag = record.etag
            hub.subscriptions = list(decode(record.data)) if record.data else []
            hub.ready.set_result(None)
            hub.ready = None
        elif hub.ready is not None:
            await asyncio.shield(hub.ready)
        return hub

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, stream: StreamId, items: list[list[Any]]) -> int | None:
        """Store (durable) and fan out ``items`` ([encoded data, event id or None] each)."""
        hub = await self._hub(stream)
        if self.service.settings.is_fast(stream.namespace):
            events = [(0, data, event_id or uuid.uuid4().hex) for data, event_id in items]
            self.fan_out(stream, 0, events, self._by_silo(stream, hub))
            return None
        log = require_log(self.service.storage, stream)
        await self.service.sweeper.know(stream.namespace)
        fresh = all(event_id is None for _, event_id in items)
        new = [new_event("stream", data, event_id or uuid.uuid4().hex) for data, event_id in items]
        last = (await log.append(stream.log_name(), stream.namespace, None, new)).version
        hub.head = max(hub.head or 0, last)
        # Ids the hub made up cannot repeat, so these are the versions just appended; a
        # publisher's own ids may have been there already: the consumers read the log then.
        first = last - len(new) + 1
        events = [(first + i, e.data, e.event_id) for i, e in enumerate(new)] if fresh else []
        self.fan_out(stream, last, events, self._by_silo(stream, hub))
        return last

    def consumers(self, stream: StreamId, hub: _Hub) -> list[WireConsumer]:
        implicit = self.service.implicit.get(stream.namespace, ())
        found = [[type_name, stream.key, "implicit", 0] for type_name in implicit]
        found.extend([s[1], s[2], s[0], s[3]] for s in hub.subscriptions)
        return found

    def _by_silo(self, stream: StreamId, hub: _Hub) -> dict[str, list[WireConsumer]]:
        """The consumers grouped by the silo hosting them (kept until the subscriptions or
        the view change: the hubs are cleared on every view change)."""
        if hub.by_silo is None:
            ring = self.service.silo.membership.ring
            by_silo: dict[str, list[WireConsumer]] = defaultdict(list)
            for consumer in self.consumers(stream, hub):
                by_silo[ring.owner(id_from_wire(consumer[0], consumer[1]))].append(consumer)
            hub.by_silo = dict(by_silo)
        return hub.by_silo

    def fan_out(
        self,
        stream: StreamId,
        head: int,
        events: list[tuple[int, bytes, str]],
        by_silo: dict[str, list[WireConsumer]],
    ) -> None:
        silo = self.service.silo
        wire_events = [list(e) for e in events]
        for destination, group in by_silo.items():
            if destination == silo.name:
                self.service.deliver(stream, head, events, group, 0, placed=True)
            else:
                target = ActorId(group[0][0], group[0][1])
                args = [stream.namespace, stream.key, head, wire_events, group, 0]
                self.service.send(target, "__stream_deliver__", args)

    # -- subscriptions ---------------------------------------------------------------------

    async def subscribe(self, stream: StreamId, consumer: ActorId) -> list[Any]:
        hub = await self._hub(stream)
        start = 0
        if not self.service.settings.is_fast(stream.namespace):
            start = await self._head(stream, hub)
        entry = [uuid.uuid4().hex, consumer.type_name, consumer.key, start]
        async with hub.writing:
            await self._write(stream, hub, [*hub.subscriptions, entry])
        return [entry[0], start]

    async def unsubscribe(self, stream: StreamId, subscription: str, consumer: ActorId) -> bool:
        hub = await self._hub(stream)
        async with hub.writing:
            kept = [
                s
                for s in hub.subscriptions
                if not (s[0] == subscription and ActorId(s[1], s[2]) == consumer)
            ]
            if len(kept) == len(hub.subscriptions):
                return False
            await self._write(stream, hub, kept)
        return True

    async def subscriptions(self, stream: StreamId) -> list[list[Any]]:
        return list((await self._hub(stream)).subscriptions)

    async def _write(self, stream: StreamId, hub: _Hub, subscriptions: list[Any]) -> None:
        rid = record_id("subscriptions", stream.log_name())
        try:
            hub.etag = await self.service.storage.write(rid, encode(subscriptions), hub.etag)
        except Exception:
            self._hubs.pop(stream.log_name(), None)  # reload: another owner may have written
            raise
        hub.subscriptions = subscriptions
        hub.by_silo = None

    async def _head(self, stream: StreamId, hub: _Hub) -> int:
        """The stream's last version (read from the log once per hub)."""
        log = require_log(self.service.storage, stream)
        head = hub.head or 0
        while True:
            page = await log.read_stream(stream.log_name(), head + 1, _PAGE)
            if page:
                head = page[-1].version
            if len(page) < _PAGE:
                break
        hub.head = max(hub.head or 0, head)
        return hub.head

    # -- catching up -----------------------------------------------------------------------

    async def sync(self, stream: StreamId, version: int) -> bool:
        """Whether every consumer of ``stream`` has consumed it up to ``version`` (waiting
        for each to catch up, activating it if need be)."""
        hub = await self._hub(stream)
        waits = []
        for consumer in self.consumers(stream, hub):
            target = ActorId(consumer[0], consumer[1])
            args = [stream.namespace, stream.key, consumer[2], consumer[3], version]
            waits.append(self.service.ask(target, "__stream_catch_up__", args))
        results = await asyncio.gather(*waits, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            get_logger().info("stream_sync_incomplete", stream=str(stream), error=repr(failed[0]))
        return not failed
