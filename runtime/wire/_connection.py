"""One authenticated connection: whole frames out, whole frames in."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from raygrain.runtime.kernel import Request, Response, get_logger
from raygrain.runtime.wire._framing import read_frame, write_frame

__all__ = ["Connection", "PeerLog"]

# What a message's envelope adds to its payload, roughly, when counting a backlog's bytes.
_ENVELOPE_BYTES = 64


class Connection:
    """A connection to (``outbound``: we dialled) or from the endpoint ``peer``, past its
    handshake."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str,
        max_frame_bytes: int,
        outbound: bool = False,
        write_buffer_bytes: int = 1024 * 1024,
        keepalive: float = 10.0,
    ) -> None:
        self.peer = peer
        self.outbound = outbound
        self.remote = remote_host(writer)
        self._reader = reader
        self._writer = writer
        self._max_frame_bytes = max_frame_bytes
        self._write_buffer_bytes = write_buffer_bytes
        # drain() waits until the buffer is back under a quarter of this
        writer.transport.set_write_buffer_limits(high=write_buffer_bytes)
        keep_alive(writer, keepalive)
        self.closed = False
        # Messages waiting for the peer to read what was written (None: not congested).
        self.backlog: list[Request | Response] | None = None
        self.backlog_bytes = 0

    def send(self, body: bytes) -> None:
        write_frame(self._writer, body)

    def congested(self) -> bool:
        """More than ``write_buffer_bytes`` written and not yet taken by the peer's socket."""
        return self._writer.transport.get_write_buffer_size() > self._write_buffer_bytes

    def buffered_bytes(self) -> int:
        """What this side holds for the peer: unwritten bytes and the backlog."""
        return self._writer.transport.get_write_buffer_size() + self.backlog_bytes

    async def drained(self) -> None:
        """Wait until the peer has read most of what was written."""
        await self._writer.drain()

    def hold(self, messages: list[Request | Response], limit: int) -> list[Request | Response]:
        """Keep ``messages`` in the backlog, up to ``limit`` bytes in all (but at least one
        message); returns those that did not fit, from the first that did not."""
        backlog = self.backlog
        assert backlog is not None
        size = self.backlog_bytes
        for index, message in enumerate(messages):
            grown = size + len(message.payload) + _ENVELOPE_BYTES
            if grown > limit and backlog:
                self.backlog_bytes = size
                return messages[index:]
            backlog.append(message)
            size = grown
        self.backlog_bytes = size
        return []

    def take_backlog(self) -> list[Request | Response]:
        backlog = self.backlog or []
        self.backlog = None
        self.backlog_bytes = 0
        return backlog

    async def receive(self) -> bytes:
        return await read_frame(self._reader, self._max_frame_bytes)

    def close(self) -> None:
        """Drop the connection at once (unsent bytes are discarded)."""
        if not self.closed:
            self.closed = True
            self._writer.transport.abort()

    def __repr__(self) -> str:
        return f"Connection(peer={self.peer!r}, remote={self.remote!r})"


def keep_alive(writer: asyncio.StreamWriter, idle: float) -> None:
    """TCP keepalive on the connection's socket: a peer that vanished without a FIN or a RST
    (its machine lost, a partition, a NAT that forgot us) is noticed after about
    ``2.5 * idle`` seconds of silence, instead of being held for ever; and the probes keep an
    idle connection's NAT entry alive. (Only while nothing is in flight: unacknowledged data
    is TCP's retransmission's to give up on.)"""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    seconds = max(1, int(idle))
    for name, value in (
        ("TCP_KEEPIDLE", seconds),  # (Linux, and others; macOS names it TCP_KEEPALIVE)
        ("TCP_KEEPALIVE", seconds),
        ("TCP_KEEPINTVL", max(1, seconds // 2)),
        ("TCP_KEEPCNT", 3),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
            except OSError:  # (an option this system names but refuses)
                pass


def remote_host(writer: asyncio.StreamWriter) -> str:
    peername = writer.get_extra_info("peername")
    return str(peername[0]) if isinstance(peername, tuple) and peername else str(peername)


class PeerLog:
    """Warnings about misbehaving peers, at most one per peer (remote host) per ``period``
    seconds; the rest go to debug, counted. A peer that floods us with bad connections can
    not flood the log too."""

    def __init__(self, period: float = 60.0, max_peers: int = 10_000) -> None:
        self.period = period
        self._max_peers = max_peers
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def refused(self, remote: str, event: str, **fields: Any) -> None:
        now = time.monotonic()
        last = self._last.get(remote)
        if last is not None and now - last < self.period:
            self._suppressed[remote] = self._suppressed.get(remote, 0) + 1
            get_logger().debug(event, remote=remote, **fields)
            return
        if len(self._last) >= self._max_peers:
            self._last.clear()  # forgetting who warned only lets a warning through early
            self._suppressed.clear()
        self._last[remote] = now
        suppressed = self._suppressed.pop(remote, 0)
        get_logger().warning(event, remote=remote, suppressed_since_last=suppressed, **fields)
