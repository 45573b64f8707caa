"""The direct data plane: messages between clients and silos over their own connections.

Length-prefixed msgpack frames (the kernel's batches, no pickle) over asyncio streams, opened
by a challenge-response handshake on a per-deployment secret (HMAC; the secret never crosses
the wire), with optional TLS. ``WireTransport`` is the kernel's ``Transport`` over it; the Ray
host publishes each silo's address and keeps Ray actor calls as the fallback. This room depends
on the kernel only.
"""

from raygrain.runtime.wire._client import dial
from raygrain.runtime.wire._connection import Connection, PeerLog
from raygrain.runtime.wire._framing import ProtocolError, read_frame, write_frame
from raygrain.runtime.wire._handshake import accept_handshake, offer_handshake
from raygrain.runtime.wire._options import DEFAULT_MAX_FRAME_BYTES, WireOptions, new_secret
from raygrain.runtime.wire._server import WireServer
from raygrain.runtime.wire._tls import TLSFiles
from raygrain.runtime.wire._transport import LinkState, Locate, WireTransport

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "Connection",
    "LinkState",
    "Locate",
    "PeerLog",
    "ProtocolError",
    "TLSFiles",
    "WireOptions",
    "WireServer",
    "WireTransport",
    "accept_handshake",
    "dial",
    "new_secret",
    "offer_handshake",
    "read_frame",
    "write_frame",
]
