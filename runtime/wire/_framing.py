"""Frames: a 4-byte big-endian length, then that many bytes.

The length is checked against a cap before anything is read or allocated, so a peer that claims a
4 GiB frame is refused on its first four bytes.
"""

from __future__ import annotations

import asyncio
import struct

__all__ = ["HEADER", "ProtocolError", "read_frame", "write_frame"]

HEADER = struct.Struct(">I")


class ProtocolError(Exception):
    """The peer broke the wire protocol (a bad handshake, an oversized or malformed frame):
    its connection is dropped. Never seen by a user: calls fail with ``SiloUnavailableError``."""


async def read_frame(reader: asyncio.StreamReader, max_bytes: int) -> bytes:
    """The next frame's body; ``ProtocolError`` if it claims more than ``max_bytes``."""
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    if size > max_bytes:
        raise ProtocolError(f"a frame of {size} bytes is over the {max_bytes}-byte limit")
    return await reader.readexactly(size)


def write_frame(writer: asyncio.StreamWriter, body: bytes) -> None:
    if len(body) < 4096:
        writer.write(HEADER.pack(len(body)) + body)
    else:  # no copy of a large body just to put four bytes before it
        writer.write(HEADER.pack(len(body)))
        writer.write(body)
