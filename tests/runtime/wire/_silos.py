"""Silos on event loops of their own (one thread each), listening on 127.0.0.1, and clients
that dial them: real sockets between two event loops."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from raygrain.actors import ActorId, ActorRef
from raygrain.runtime.kernel import (
    ActorRegistry,
    Caller,
    CallFilter,
    CallObserver,
    CallSettings,
    Membership,
    Silo,
    SiloOptions,
    SiloStatus,
    SystemClock,
    Transport,
)
from raygrain.runtime.wire import WireOptions, WireTransport
from raygrain.storage import MemoryStorage
from tests import app

SECRET = b"s" * 32


class Directory:
    """Where each silo listens (what the Ray host publishes)."""

    def __init__(self) -> None:
        self.addresses: dict[str, tuple[str, int] | None] = {}

    async def locate(self, silo: str) -> tuple[str, int] | None:
        return self.addresses.get(silo)


class SiloInThread:
    """One silo over a WireTransport, on its own loop in another thread."""

    def __init__(
        self,
        name: str,
        directory: Directory,
        options: WireOptions,
        silos: list[str],
        fallback: Transport | None = None,
        listen: str = "127.0.0.1",
        loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
    ) -> None:
        self.name = name
        self.loop = loop_factory()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.transport: WireTransport
        self.silo: Silo
        self.address = self.run(self._start(directory, options, silos, fallback, listen))
        directory.addresses[name] = self.address

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coroutine`` on the silo's loop and wait for it (from outside any loop)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    async def run_async(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        """The same, awaited from another loop (which keeps running meanwhile)."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self.loop))

    async def _start(
        self,
        directory: Directory,
        options: WireOptions,
        silos: list[str],
        fallback: Transport | None,
        listen: str,
    ) -> tuple[str, int]:
        membership = Membership()
        for name in silos:
            membership.set_status(name, SiloStatus.ACTIVE)
        self.transport = WireTransport(self.name, options, directory.locate, fallback)
        self.silo = Silo(
            self.name,
            ActorRegistry(app.ALL_ACTORS),
            MemoryStorage(),
            self.transport,
            membership,
            SystemClock(),
            SiloOptions(deactivation_timeout=0.5),
        )
        self.transport.bind_silo(self.silo)
        self.silo.start()
        return await self.transport.listen(listen)

    async def _drop_connections(self) -> int:
        return self.transport.drop_connections()

    async def drop_connections(self) -> int:
        return int(await self.run_async(self._drop_connections()))

    def stop(self) -> None:
        async def close() -> None:
            await self.silo.aclose()
            await self.transport.aclose()

        self.run(close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Client:
    """A caller over a WireTransport (in the test's own loop)."""

    def __init__(
        self,
        directory: Directory,
        options: WireOptions,
        silos: list[str],
        name: str = "client-1",
        fallback: Transport | None = None,
        filters: tuple[CallFilter | CallObserver, ...] = (),
    ) -> None:
        membership = Membership()
        for silo in silos:
            membership.set_status(silo, SiloStatus.ACTIVE)
        self.transport = WireTransport(name, options, directory.locate, fallback)
        self.caller = Caller(
            name,
            self.transport,
            membership,
            ActorRegistry(app.ALL_ACTORS),
            CallSettings(10.0),
            filters=filters,
        )
        self.transport.bind(self.caller)

    def ref(self, actor: type[Any], key: str) -> Any:
        return ActorRef(ActorId(actor.__actor_options__.name, key), self.caller)

    async def aclose(self) -> None:
        self.caller.close()
        await self.transport.aclose()
