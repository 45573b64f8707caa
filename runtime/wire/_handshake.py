"""The challenge-response handshake that opens every connection.

Both sides hold the deployment's secret; it never crosses the wire. The silo (server) sends a
fresh nonce; the dialer answers with its own nonce, its endpoint name and
HMAC-SHA256(secret, "client" | server nonce | client nonce | name); the silo checks it and answers
with its own name and HMAC-SHA256(secret, "server" | client nonce | server nonce | both names),
which proves to the dialer that it reached a member of the same deployment, and which one: a
dialer that reaches another silo than the one it meant (an address gone stale, its port taken
by a newer silo) refuses it. Fresh nonces on both sides defeat replay; the names are bound into
the MACs so that they cannot be swapped. The handshake authenticates the peers only: without
TLS, the bytes that follow are neither secret nor protected from a man in the middle.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os

from raygrain.runtime.wire._framing import ProtocolError, read_frame, write_frame

__all__ = ["MAX_NAME_BYTES", "accept_handshake", "offer_handshake"]

MAGIC = b"RGW2"  # raygrain wire, version 2 (version 1: the silo did not name itself)
NONCE_BYTES = 32
MAC_BYTES = 32
MAX_NAME_BYTES = 256
_CHALLENGE_BYTES = len(MAGIC) + NONCE_BYTES
_ANSWER_HEAD = len(MAGIC) + NONCE_BYTES + MAC_BYTES


def _mac(secret: bytes, role: bytes, *parts: bytes) -> bytes:
    return hmac.new(secret, role + b"".join(parts), hashlib.sha256).digest()


def _names(client: bytes, server: bytes) -> bytes:
    # (The client's length first: two names read as one string could be split elsewhere.)
    return len(client).to_bytes(2, "big") + client + server


async def accept_handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secret: bytes, name: str
) -> str:
    """(Silo side) challenge the dialer and prove to it that we are the silo ``name``; returns
    the endpoint name the dialer proved, or raises ``ProtocolError``."""
    own = _encoded(name)
    server_nonce = os.urandom(NONCE_BYTES)
    write_frame(writer, MAGIC + server_nonce)
    answer = await read_frame(reader, _ANSWER_HEAD + MAX_NAME_BYTES)
    if len(answer) <= _ANSWER_HEAD or answer[: len(MAGIC)] != MAGIC:
        raise ProtocolError("not a raygrain wire handshake (or another version of it)")
    client_nonce = answer[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
    mac = answer[len(MAGIC) + NONCE_BYTES : _ANSWER_HEAD]
    peer = answer[_ANSWER_HEAD:]
    if not hmac.compare_digest(mac, _mac(secret, b"client", server_nonce, client_nonce, peer)):
        raise ProtocolError("handshake refused: the peer does not know the deployment secret")
    try:
        text = peer.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("handshake refused: the peer's name is not UTF-8") from None
    proof = _mac(secret, b"server", client_nonce, server_nonce, _names(peer, own))
    write_frame(writer, proof + own)
    await writer.drain()
    return text


async def offer_handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    secret: bytes,
    name: str,
    expect: str | None = None,
) -> str:
    """(Dialer side) answer the silo's challenge as ``name``; returns the silo's name. Raises
    ``ProtocolError`` when the silo cannot prove that it knows the secret, or that it is the
    silo ``expect`` (when given)."""
    encoded = _encoded(name)
    challenge = await read_frame(reader, _CHALLENGE_BYTES)
    if len(challenge) != _CHALLENGE_BYTES or challenge[: len(MAGIC)] != MAGIC:
        raise ProtocolError("the peer is not a raygrain silo (bad challenge, or another version)")
    server_nonce = challenge[len(MAGIC) :]
    client_nonce = os.urandom(NONCE_BYTES)
    mac = _mac(secret, b"client", server_nonce, client_nonce, encoded)
    write_frame(writer, MAGIC + client_nonce + mac + encoded)
    await writer.drain()
    answer = await read_frame(reader, MAC_BYTES + MAX_NAME_BYTES)
    proof, silo = answer[:MAC_BYTES], answer[MAC_BYTES:]
    expected = _mac(secret, b"server", client_nonce, server_nonce, _names(encoded, silo))
    if not hmac.compare_digest(proof, expected):
        raise ProtocolError("the silo failed to prove that it knows the deployment secret")
    text = silo.decode("utf-8", "replace")
    if expect is not None and text != expect:
        raise ProtocolError(f"the silo at this address is {text!r}, not {expect!r}")
    return text


def _encoded(name: str) -> bytes:
    encoded = name.encode("utf-8")
    if not 0 < len(encoded) <= MAX_NAME_BYTES:
        raise ValueError(f"an endpoint name must be 1 to {MAX_NAME_BYTES} bytes, got {name!r}")
    return encoded
