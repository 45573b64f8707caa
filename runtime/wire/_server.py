"""The silo's listener: accepts connections, runs the handshake, hands on the members.

A connection that does not complete the handshake in time, answers it wrongly or sends bytes
that are not the protocol is dropped; nothing else on the silo notices. Each refusal is logged
through a ``PeerLog`` (one warning per remote host per minute).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable

from raygrain.runtime.kernel import get_logger
from raygrain.runtime.wire._connection import Connection, PeerLog, remote_host
from raygrain.runtime.wire._framing import ProtocolError
from raygrain.runtime.wire._handshake import accept_handshake
from raygrain.runtime.wire._options import WireOptions

__all__ = ["WireServer"]

# What a peer can do wrong during the handshake; all of it ends that connection only.
_HANDSHAKE_FAILURES = (
    ProtocolError,
    asyncio.IncompleteReadError,
    asyncio.TimeoutError,
    ConnectionError,
    OSError,
    ssl.SSLError,
)


class WireServer:
    """Listens for members; ``serve(connection)`` runs for each authenticated connection
    until it ends."""

    def __init__(
        self,
        options: WireOptions,
        serve: Callable[[Connection], Awaitable[None]],
        log: PeerLog,
    ) -> None:
        self._options = options
        self._serve = serve
        self._log = log
        self._server: asyncio.Server | None = None
        self.address: tuple[str, int] | None = None
        self.refused = 0  # connections dropped before or during the handshake
        self._handshaking: set[asyncio.StreamWriter] = set()

    async def start(self, host: str, port: int = 0) -> tuple[str, int]:
        """Listen on ``host`` (port 0: one the OS chooses); returns the address to publish."""
        options = self._options
        self._server = await asyncio.start_server(
            self._accept,
            host,
            port,
            ssl=options.server_ssl,
            # (asyncio's default is 60 s: a dialer that says nothing is dropped as soon without TLS)
            ssl_handshake_timeout=options.handshake_timeout if options.server_ssl else None,
        )
        bound = self._server.sockets[0].getsockname()
        self.address = (host, int(bound[1]))
        return self.address

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._handshaking.add(writer)
        try:
            peer = await asyncio.wait_for(
                accept_handshake(reader, writer, self._options.secret),
                self._options.handshake_timeout,
            )
        except _HANDSHAKE_FAILURES as exc:
            self.refused += 1
            writer.transport.abort()
            if isinstance(exc, asyncio.IncompleteReadError) and not exc.partial:
                # Connected and hung up without a byte: a port probe or a dialer giving up.
                get_logger().debug("wire_connection_closed_before_handshake")
                return
            reason = "no handshake in time" if isinstance(exc, asyncio.TimeoutError) else repr(exc)
            self._log.refused(remote_host(writer), "wire_connection_refused", reason=reason)
            return
        finally:
            self._handshaking.discard(writer)
        options = self._options
        connection = Connection(
            reader,
            writer,
            peer,
            options.max_frame_bytes,
            write_buffer_bytes=options.write_buffer_bytes,
        )
        await self._serve(connection)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()  # (stops listening; connections already accepted stay open)
            self._server = None
        for writer in self._handshaking:  # the authenticated ones are the transport's to close
            writer.transport.abort()
