"""Dialing a silo: connect (TLS if configured), then prove membership by the handshake."""

from __future__ import annotations

import asyncio

from raygrain.runtime.wire._connection import Connection
from raygrain.runtime.wire._handshake import offer_handshake
from raygrain.runtime.wire._options import WireOptions

__all__ = ["dial"]


async def dial(host: str, port: int, name: str, peer: str, options: WireOptions) -> Connection:
    """An authenticated connection to the silo ``peer`` at ``host:port``, as endpoint ``name``.
    Raises ``OSError``/``TimeoutError``/``ProtocolError`` when it cannot be had."""
    dialing = asyncio.ensure_future(_dial(host, port, name, peer, options))
    try:
        # (shielded: Python 3.11's wait_for can drop a result that lands as it is cancelled,
        # which would leak an open connection; the dial is closed below instead)
        return await asyncio.wait_for(asyncio.shield(dialing), options.connect_timeout)
    except BaseException as exc:
        dialing.cancel()
        dialing.add_done_callback(_close_if_connected)
        if isinstance(exc, asyncio.TimeoutError):
            # (A silo that expects TLS waits in silence for a plain dialer's TLS hello, and
            # the dialer for its challenge: say what that looks like.)
            raise asyncio.TimeoutError(
                f"no connection and handshake within {options.connect_timeout} s "
                f"({'' if options.client_ssl else 'not '}using TLS: does the silo?)"
            ) from None
        raise


def _close_if_connected(dialing: asyncio.Future[Connection]) -> None:
    if not dialing.cancelled() and dialing.exception() is None:
        dialing.result().close()


async def _dial(host: str, port: int, name: str, peer: str, options: WireOptions) -> Connection:
    reader, writer = await asyncio.open_connection(
        host,
        port,
        ssl=options.client_ssl,
        server_hostname=host if options.client_ssl is not None else None,
    )
    try:
        await offer_handshake(reader, writer, options.secret, name, expect=peer)
    except BaseException:
        writer.transport.abort()
        raise
    return Connection(
        reader,
        writer,
        peer,
        options.max_frame_bytes,
        outbound=True,
        write_buffer_bytes=options.write_buffer_bytes,
        keepalive=options.keepalive,
    )
