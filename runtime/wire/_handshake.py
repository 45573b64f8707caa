"""The challenge-response handshake that opens every connection.

Both sides hold the deployment's secret; it never crosses the wire. The silo (server) sends a
fresh nonce; the dialer answers with its own nonce, its endpoint name and
HMAC-SHA256(secret, "client" | server nonce | client nonce | name); the silo checks it and answers
HMAC-SHA256(secret, "server" | client nonce | server nonce | name), which proves to the dialer that
it reached a member of the same deployment. Fresh nonces on both sides defeat replay; the name is
bound into both MACs so that it cannot be swapped. The handshake authenticates the peers only:
without TLS, the bytes that follow are neither secret nor protected from a man in the middle.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os

from raygrain.runtime.wire._framing import ProtocolError, read_frame, write_frame

__all__ = ["MAX_NAME_BYTES", "accept_handshake", "offer_handshake"]

MAGIC = b"RGW1"  # raygrain wire, version 1
NONCE_BYTES = 32
MAC_BYTES = 32
MAX_NAME_BYTES = 256
_CHALLENGE_BYTES = len(MAGIC) + NONCE_BYTES
_ANSWER_HEAD = len(MAGIC) + NONCE_BYTES + MAC_BYTES


def _mac(secret: bytes, role: bytes, *parts: bytes) -> bytes:
    return hmac.new(secret, role + b"".join(parts), hashlib.sha256).digest()


async def accept_handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secret: bytes
) -> str:
    """(Silo side) challenge the dialer; returns the endpoint name it proved, or raises
    ``ProtocolError``."""
    server_nonce = os.urandom(NONCE_BYTES)
    write_frame(writer, MAGIC + server_nonce)
    answer = await read_frame(reader, _ANSWER_HEAD + MAX_NAME_BYTES)
    if len(answer) <= _ANSWER_HEAD or answer[: len(MAGIC)] != MAGIC:
        raise ProtocolError("not a raygrain wire handshake")
    client_nonce = answer[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
    mac = answer[len(MAGIC) + NONCE_BYTES : _ANSWER_HEAD]
    name = answer[_ANSWER_HEAD:]
    if not hmac.compare_digest(mac, _mac(secret, b"client", server_nonce, client_nonce, name)):
        raise ProtocolError("handshake refused: the peer does not know the deployment secret")
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("handshake refused: the peer's name is not UTF-8") from None
    write_frame(writer, _mac(secret, b"server", client_nonce, server_nonce, name))
    await writer.drain()
    return text


async def offer_handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secret: bytes, name: str
) -> None:
    """(Dialer side) answer the silo's challenge as ``name``; raises ``ProtocolError`` when the
    silo cannot prove that it knows the secret."""
    encoded = name.encode("utf-8")
    if not 0 < len(encoded) <= MAX_NAME_BYTES:
        raise ValueError(f"an endpoint name must be 1 to {MAX_NAME_BYTES} bytes, got {name!r}")
    challenge = await read_frame(reader, _CHALLENGE_BYTES)
    if len(challenge) != _CHALLENGE_BYTES or challenge[: len(MAGIC)] != MAGIC:
        raise ProtocolError("the peer is not a raygrain silo (bad challenge)")
    server_nonce = challenge[len(MAGIC) :]
    client_nonce = os.urandom(NONCE_BYTES)
    mac = _mac(secret, b"client", server_nonce, client_nonce, encoded)
    write_frame(writer, MAGIC + client_nonce + mac + encoded)
    await writer.drain()
    proof = await read_frame(reader, MAC_BYTES)
    if not hmac.compare_digest(proof, _mac(secret, b"server", client_nonce, server_nonce, encoded)):
        raise ProtocolError("the silo failed to prove that it knows the deployment secret")
