"""The direct data plane on Ray: what a deployment's silos and clients share to use it.

A ``DirectPlane`` (the per-deployment secret, TLS files, the frame cap) is created at launch
and handed to every silo and, on request, to clients, through Ray: the same trust boundary as
Ray itself. Each silo listens on its node's IP on a port the OS chooses and publishes it through
its Ray actor (``wire_address``); ``Locator`` finds it. Ray actor calls stay as the fallback
(see ``runtime.wire.WireTransport``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from raygrain.actors import ConfigurationError
from raygrain.runtime.kernel import Request, Response, Transport
from raygrain.runtime.wire import DEFAULT_MAX_FRAME_BYTES, TLSFiles, WireOptions, new_secret

__all__ = ["TRANSPORTS", "DirectPlane", "Locator", "PlaneSwitch", "check_transport", "frame_cap"]

TRANSPORTS = ("direct", "ray")


def check_transport(value: object) -> str:
    if value not in TRANSPORTS:
        raise ConfigurationError(f"transport must be 'direct' or 'ray', got {value!r}")
    return str(value)


@dataclass(frozen=True)
class DirectPlane:
    """What every member of a deployment needs to connect directly."""

    secret: bytes = field(default_factory=new_secret, repr=False)
    tls: TLSFiles | None = None
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES

    def options(self, listening: bool = True) -> WireOptions:
        """A silo's (``listening``: it presents the certificate and key) or a client's (it only
        dials: it needs the CA file alone, never the silos' key). A TLS file missing or
        unusable on this machine is a ``ConfigurationError`` that names it."""
        tls = self.tls
        return WireOptions(
            self.secret,
            server_ssl=tls.server_context() if tls is not None and listening else None,
            client_ssl=tls.client_context() if tls is not None else None,
            max_frame_bytes=self.max_frame_bytes,
        )


def frame_cap(max_message_bytes: int) -> int:
    """A frame carries at least one whole message (a 16 MiB one by default), with room."""
    return max(DEFAULT_MAX_FRAME_BYTES, 2 * max_message_bytes + 1024 * 1024)


class Locator:
    """A silo's published direct address, asked of its Ray actor once (a silo's name is new
    with every incarnation, so the answer never goes stale).

    Finding the actor (``resolve``: Ray's ``get_actor``, a blocking call to Ray's GCS) runs on
    a thread, not on the event loop; its answer is awaited at most ``timeout`` seconds (a silo
    that is stuck without being dead yet), after which the dial counts as failed: its calls go
    by Ray meanwhile, and the next dial asks again."""

    def __init__(self, resolve: Any, timeout: float = 5.0) -> None:
        self._resolve = resolve
        self._timeout = timeout
        self._known: dict[str, tuple[str, int] | None] = {}

    async def __call__(self, silo: str) -> tuple[str, int] | None:
        if silo in self._known:
            return self._known[silo]
        handle = await asyncio.to_thread(self._resolve, silo)
        try:
            found = await asyncio.wait_for(handle.wire_address.remote(), self._timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(
                f"silo {silo} did not say its direct address within {self._timeout} s"
            ) from None
        address = (str(found[0]), int(found[1])) if found else None
        self._known[silo] = address
        return address


class PlaneSwitch:
    """A client's transport: Ray's until ``use`` hands it the direct one (the client learns
    the deployment's secret only once it has reached Ray)."""

    def __init__(self, transport: Transport) -> None:
        self.current = transport

    def use(self, transport: Transport) -> None:
        self.current = transport

    def send(self, destination: str, request: Request) -> None:
        self.current.send(destination, request)

    def reply(self, destination: str, response: Response) -> None:
        self.current.reply(destination, response)
