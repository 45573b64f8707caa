"""Message envelopes: a call (``Request``) and its outcome (``Response``).

In-process they travel as these objects; across processes ``pack_batch``/``unpack_batch`` turn a
batch of them into one msgpack blob (no pickle). Arguments, results and errors are already bytes
from the ``actors`` codec by the time they are put in an envelope: that is the copy boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from raygrain.actors import ActorId, ActorKey

__all__ = ["Request", "Response", "pack_batch", "unpack_batch"]


@dataclass(slots=True)
class Request:
    """One call. ``chain`` lists the activations waiting (transitively) on it, for deadlock
    detection; ``timeout`` is the seconds left when it was sent."""

    call_id: int
    target: ActorId
    method: str
    payload: bytes
    reply_to: str
    timeout: float
    chain: tuple[ActorId, ...] = ()
    hops: int = 0
    transaction: bytes | None = None
    view_version: int = -1  # the sender's membership view; -1: unknown, always re-checked
    # The W3C trace context (``traceparent``) of the caller's span, if the call is traced.
    traceparent: str | None = None

    def to_wire(self) -> list[Any]:
        wire = [
            0,
            self.call_id,
            self.target.type_name,
            wire_key(self.target.key),
            self.method,
            self.payload,
            self.reply_to,
            self.timeout,
            [id_to_wire(a) for a in self.chain] if self.chain else (),
            self.hops,
            self.transaction,
            self.view_version,
        ]
        if self.traceparent is not None:  # optional and last: older messages still decode
            wire.append(self.traceparent)
        return wire


@dataclass(slots=True)
class Response:
    """The outcome of call ``call_id``: ``ok`` with an encoded result, or an encoded error.
    ``joined`` names the actors that joined the caller's transaction during the call."""

    call_id: int
    ok: bool
    payload: bytes
    joined: tuple[ActorId, ...] = ()

    def to_wire(self) -> list[Any]:
        if self.joined:
            joined = [id_to_wire(a) for a in self.joined]
            return [1, self.call_id, self.ok, self.payload, joined]
        return [1, self.call_id, self.ok, self.payload]


# An ActorId may hold what plain msgpack refuses, and one message that cannot be packed fails its
# whole batch: strings travel with "surrogatepass" (lone surrogates are valid in an ActorId, as
# in its canonical form), and an int key beyond 64 bits as its text (see wire_key).
_UNICODE_ERRORS = "surrogatepass"
_WIRE_INTS = range(-(2**63), 2**64)  # what msgpack carries as an integer


def wire_key(key: ActorKey) -> Any:
    """An actor key as msgpack can carry it: itself, or an int too large as ``[its text]``."""
    if isinstance(key, int) and key not in _WIRE_INTS:
        return [str(key)]
    return key


def id_to_wire(actor_id: ActorId) -> list[Any]:
    """``[type name, key]`` as msgpack can carry them (see ``id_from_wire``)."""
    return [actor_id.type_name, wire_key(actor_id.key)]


def key_from_wire(value: Any) -> Any:
    """The key ``wire_key`` sent (anything else is passed on, for ActorId to refuse)."""
    if type(value) is list and len(value) == 1 and type(value[0]) is str:
        text = value[0]
        # Only the exact text wire_key writes (int() would also take " 12", "1_000", "١٢").
        digits = text[1:] if text.startswith("-") else text
        if digits.isascii() and digits.isdigit() and str(int(text)) == text:
            return int(text)
    return value


def pack(value: Any) -> bytes:
    return msgpack.packb(  # type: ignore[no-any-return]
        value, use_bin_type=True, unicode_errors=_UNICODE_ERRORS
    )


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False, unicode_errors=_UNICODE_ERRORS)


def pack_batch(messages: Sequence[Request | Response]) -> bytes:
    return pack([m.to_wire() for m in messages])


def unpack_batch(data: bytes) -> list[Request | Response]:
    out: list[Request | Response] = []
    for item in unpack(data):
        if item[0] == 1:
            joined = tuple(id_from_wire(t, k) for t, k in item[4]) if len(item) > 4 else ()
            out.append(Response(item[1], item[2], item[3], joined))
        else:
            chain = tuple(id_from_wire(t, k) for t, k in item[8]) if item[8] else ()
            out.append(
                Request(
                    item[1],
                    id_from_wire(item[2], item[3]),
                    item[4],
                    item[5],
                    item[6],
                    item[7],
                    chain,
                    item[9],
                    item[10],
                    item[11],
                    item[12] if len(item) > 12 else None,
                )
            )
    return out


# The ids of recent messages: building an ActorId hashes it (xxhash of its canonical bytes),
# and the same few thousand actors arrive again and again.
_KNOWN_IDS: dict[tuple[str, Any, type], ActorId] = {}
_MAX_KNOWN_IDS = 50_000


def id_from_wire(type_name: str, key: Any) -> ActorId:
    """The ActorId that ``id_to_wire`` (or a message's own fields) sent; an invalid key is
    refused by ActorId with an error that names it."""
    if type(key) is list:
        return ActorId(type_name, key_from_wire(key))
    # type(key) is part of the cache key: 1 and 1.0 and True are equal dict keys, and only
    # the first of them is a valid actor key.
    cache_key = (type_name, key, type(key))
    try:
        found = _KNOWN_IDS.get(cache_key)
    except TypeError:  # an unhashable key: ActorId names what is wrong with it
        return ActorId(type_name, key)
    if found is None:
        if len(_KNOWN_IDS) >= _MAX_KNOWN_IDS:
            _KNOWN_IDS.clear()
        found = _KNOWN_IDS[cache_key] = ActorId(type_name, key)
    return found
