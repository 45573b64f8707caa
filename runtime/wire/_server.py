"""The silo's listener: accepts connections, runs the handshake, hands on the members.

A connection that does not complete the handshake in time, answers it wrongly or sends bytes
that are not the protocol is dropped; nothing else on the silo notices. At most
``max_handshakes`` connections wait in their handshake at once (the oldest is dropped for a
newer one), so a flood of connections that never finish cannot take the silo's file
descriptors. Each refusal is logged through a ``PeerLog`` (one warning per remote host per
minute).
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
        name: str,
        options: WireOptions,
        serve: Callable[[Connection], Awaitable[None]],
        log: PeerLog,
    ) -> None:
        self.name = name  # the silo's, proved to each dialer in the handshake
        self._options = options
        self._serve = serve
        self._log = log
        self._server: asyncio.Server | None = None
        self.address: tuple[str, int] | None = None
        self.refused = 0  # connections dropped before or during the handshake
        # Connections in handshake, oldest first; those pushed out by newer ones.
        self._tls_in_accept = _TLS_IN_ACCEPT  # (start: not on uvloop)
        self._handshaking: dict[asyncio.StreamWriter, None] = {}
        self._evicted: set[asyncio.StreamWriter] = set()

    async def start(self, host: str, port: int = 0) -> tuple[str, int]:
        """Listen on ``host`` (port 0: one the OS chooses); returns the address to publish."""
        options = self._options
        # TLS is started by _accept where it can be (Python 3.11+), so that a connection in its
        # TLS handshake counts among those in handshake, and its refusal is counted and logged
        # as any other; on 3.10 asyncio runs it before _accept, bounded by the same timeout.
        # Not on uvloop: its start_tls on a server's stream loses a ClientHello the stream has
        # already read, and the handshake hangs (MagicStack/uvloop#707); asyncio's has the same
        # race, which its order of callbacks keeps from happening. There, as on 3.10, the loop
        # runs the TLS handshake before _accept.
        self._tls_in_accept = _TLS_IN_ACCEPT and not _is_uvloop(asyncio.get_running_loop())
        in_accept = self._tls_in_accept or options.server_ssl is None
        self._server = await asyncio.start_server(
            self._accept,
            host,
            port,
            ssl=None if in_accept else options.server_ssl,
            ssl_handshake_timeout=None if in_accept else options.handshake_timeout,
        )
        bound = self._server.sockets[0].getsockname()
        self.address = (host, int(bound[1]))
        return self.address

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        options = self._options
        if len(self._handshaking) >= options.handshake_limit:
            # Each connection holds a file descriptor until its handshake ends: a flood of
            # silent ones would take them all. The oldest goes (a member's handshake is one
            # round trip, so it is the newest that are most likely members).
            oldest = next(iter(self._handshaking))
            del self._handshaking[oldest]
            self._evicted.add(oldest)
            oldest.transport.abort()
        self._handshaking[writer] = None
        # (A failed start_tls leaves the writer without a transport: keep what is needed.)
        transport, remote = writer.transport, remote_host(writer)
        try:
            if options.server_ssl is not None and self._tls_in_accept:
                await _start_tls(writer, transport, options.server_ssl, options.handshake_timeout)
            peer = await asyncio.wait_for(
                accept_handshake(reader, writer, options.secret, self.name),
                options.handshake_timeout,
            )
        except _HANDSHAKE_FAILURES as exc:
            self.refused += 1
            (writer.transport or transport).abort()
            if writer in self._evicted:
                limit = options.handshake_limit
                reason = f"over {limit} connections in handshake (max_handshakes)"
            elif isinstance(exc, _ClosedInTLS) or (
                isinstance(exc, asyncio.IncompleteReadError) and not exc.partial
            ):
                # Connected and hung up without a byte: a port probe or a dialer giving up.
                get_logger().debug("wire_connection_closed_before_handshake")
                return
            elif isinstance(exc, asyncio.TimeoutError):
                reason = "no handshake in time"
            else:
                reason = repr(exc)
            self._log.refused(remote, "wire_connection_refused", reason=reason)
            return
        finally:
            self._handshaking.pop(writer, None)
            self._evicted.discard(writer)
        connection = Connection(
            reader,
            writer,
            peer,
            options.max_frame_bytes,
            write_buffer_bytes=options.write_buffer_bytes,
            keepalive=options.keepalive,
        )
        await self._serve(connection)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()  # (stops listening; connections already accepted stay open)
            self._server = None
        for writer in list(self._handshaking):  # (the authenticated ones: the transport's)
            writer.transport.abort()


_TLS_IN_ACCEPT = hasattr(asyncio.StreamWriter, "start_tls")


def _is_uvloop(loop: asyncio.AbstractEventLoop) -> bool:
    return type(loop).__module__.partition(".")[0] == "uvloop"


class _ClosedInTLS(ConnectionResetError):
    """The dialer hung up during the TLS handshake (a port probe, a dialer giving up)."""


async def _start_tls(
    writer: asyncio.StreamWriter,
    transport: asyncio.BaseTransport,
    context: ssl.SSLContext,
    timeout: float,
) -> None:
    try:
        await writer.start_tls(context, ssl_handshake_timeout=timeout)  # type: ignore[attr-defined]
    except AttributeError:
        # (asyncio 3.11: a connection closed in the TLS handshake ends it as if it had
        # succeeded, without a transport, and the writer is left with none, which breaks
        # even its __del__: give it back the one it had.)
        writer._transport = transport  # type: ignore[attr-defined]
        raise _ClosedInTLS("closed during the TLS handshake") from None
