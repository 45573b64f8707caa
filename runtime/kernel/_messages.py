"""Message envelopes: a call (``Request``) and its outcome (``Response``).

In-process they travel as these objects; across processes ``pack_batch``/``unpack_batch`` turn a
batch of them into one msgpack blob (no pickle). Arguments, results and errors are already bytes
from the ``actors`` codec by the time they are put in an envelope: that is the copy boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from raygrain.actors import ActorId, ActorKey, MalformedMessageError

__all__ = ["Malformed", "Request", "Response", "pack_batch", "unpack_batch"]


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
        target = self.target
        key = target.key
        wire = [
            0,
            self.call_id,
            target.type_name,
            # (wire_key, inlined: every request passes here)
            key
            if type(key) is str or (type(key) is int and _MIN_WIRE_INT <= key <= _MAX_WIRE_INT)
            else wire_key(key),
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
# What msgpack carries as an integer. (Compared, not ``in range(...)``: a range tests only an
# exact int in constant time; an int subclass, an IntEnum key, it scans, 2**64 values.)
_MIN_WIRE_INT, _MAX_WIRE_INT = -(2**63), 2**64 - 1


def wire_key(key: ActorKey) -> Any:
    """An actor key as msgpack can carry it: itself, or an int too large as ``[its text]``
    (an int subclass, an IntEnum, as the plain int it is equal to)."""
    if isinstance(key, int):
        key = int(key)
        return key if _MIN_WIRE_INT <= key <= _MAX_WIRE_INT else [str(key)]
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
    wire: list[list[Any]] = []
    append = wire.append
    for message in messages:
        if type(message) is Response and not message.joined:  # (most answers: inlined)
            append([1, message.call_id, message.ok, message.payload])
        else:
            append(message.to_wire())
    return pack(wire)


@dataclass(frozen=True, slots=True)
class Malformed:
    """A message of a batch that is not a valid envelope. ``call_id`` and ``reply_to`` are set
    when they could be read, so the sender can be told (see ``unpack_batch``)."""

    reason: str
    call_id: int | None = None
    reply_to: str | None = None


def unpack_batch(
    data: bytes, on_malformed: Callable[[Malformed], None] | None = None
) -> list[Request | Response]:
    """The messages of a batch. Each is checked on its own: a malformed one is left out and
    handed to ``on_malformed`` (or logged by the caller's choice: dropped when None), and never
    affects the others. A batch that is not a msgpack list at all raises
    ``MalformedMessageError``."""
    try:
        items = unpack(data)
    except Exception as exc:
        raise MalformedMessageError(f"a message batch is not valid msgpack: {exc}") from None
    if type(items) is not list:
        raise MalformedMessageError(f"a message batch is a {type(items).__name__}, not a list")
    out: list[Request | Response] = []
    append = out.append
    known = _KNOWN_IDS
    for item in items:
        # The usual answer ([1, call id, ok, payload], well typed) and the usual request (from
        # outside any turn and transaction, untraced, its key a string), checked here without
        # a call; anything else goes through _from_wire's checks.
        if type(item) is list:
            size = len(item)
            if size == 4 and item[0] == 1:
                call_id, ok, payload = item[1], item[2], item[3]
                if type(call_id) is int and type(ok) is bool and type(payload) is bytes:
                    append(Response(call_id, ok, payload))
                    continue
            elif size == 12 and item[0] == 0:
                (_, call_id, type_name, key, method, payload, reply_to, timeout, chain, hops,
                 transaction, view_version) = item  # fmt: skip
                key_type = type(key)
                if (
                    type(type_name) is str
                    and (key_type is str or key_type is int)
                    and type(call_id) is int
                    and type(method) is str
                    and type(payload) is bytes
                    and type(reply_to) is str
                    and type(timeout) is float
                    and 0.0 < timeout < _INFINITY
                    and chain == []
                    and type(hops) is int
                    and transaction is None
                    and type(view_version) is int
                ):
                    target = known.get((type_name, key, key_type))  # (see id_from_wire)
                    if target is not None:
                        append(
                            Request(
                                call_id, target, method, payload, reply_to, timeout, (), hops,
                                None, view_version,
                            )
                        )  # fmt: skip
                        continue
        try:
            out.append(_from_wire(item))
        except Exception as exc:  # whatever a malformed message makes the checks raise
            if on_malformed is not None:
                on_malformed(_malformed(item, exc))
    return out


_INFINITY = float("inf")


def _from_wire(item: Any) -> Request | Response:
    if type(item) is not list or not item:
        raise ValueError(f"a message is a {type(item).__name__}, not a non-empty list")
    if item[0] == 1:
        size = len(item)
        if size != 4 and size != 5:
            _expect(item, (4, 5), "response")
        call_id, ok, payload = item[1], item[2], item[3]
        if not (type(call_id) is int and type(ok) is bool and type(payload) is bytes):
            _check("call id", call_id, int)
            _check("ok", ok, bool)
            _check("payload", payload, bytes)
        joined = tuple(id_from_wire(*_pair(t)) for t in item[4]) if size > 4 else ()
        return Response(call_id, ok, payload, joined)
    if item[0] != 0:
        raise ValueError(f"unknown message kind {item[0]!r}")
    size = len(item)
    if size != 12 and size != 13:  # 13: with a trace context
        _expect(item, (12, 13), "request")
    (_, call_id, type_name, key, method, payload, reply_to, timeout, chain, hops) = item[:10]
    transaction, view_version = item[10], item[11]
    traceparent = item[12] if size > 12 else None
    # Every message of every batch comes through here: one test for the usual shapes, and the
    # checks that name the wrong field only when it fails.
    if not (
        type(call_id) is int
        and type(reply_to) is str
        and type(type_name) is str
        and type(method) is str
        and type(payload) is bytes
        and type(hops) is int
        and type(view_version) is int
        and (traceparent is None or type(traceparent) is str)
        and (transaction is None or type(transaction) is bytes)
    ):
        _check_request_fields(item)
    if type(timeout) not in (int, float) or not 0 < timeout < float("inf"):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if not chain:
        if type(chain) not in (list, tuple):
            raise ValueError(f"call chain must be a list, got {type(chain).__name__}")
        ids: tuple[ActorId, ...] = ()
    elif type(chain) not in (list, tuple):
        raise ValueError(f"call chain must be a list, got {type(chain).__name__}")
    else:
        ids = tuple(id_from_wire(*_pair(link)) for link in chain)
    return Request(
        call_id,
        id_from_wire(type_name, key),
        method,
        payload,
        reply_to,
        float(timeout),
        ids,
        hops,
        transaction,
        view_version,
        traceparent,
    )


def _check_request_fields(item: list[Any]) -> None:
    """Raise the error that names a request's first field of the wrong type."""
    if len(item) > 12 and item[12] is not None:
        _check("traceparent", item[12], str)
    _check("call id", item[1], int)
    _check("reply address", item[6], str)
    _check("type name", item[2], str)
    _check("method", item[4], str)
    _check("payload", item[5], bytes)
    _check("hops", item[9], int)
    _check("view version", item[11], int)
    if item[10] is not None:
        _check("transaction header", item[10], bytes)


def _expect(item: list[Any], lengths: tuple[int, ...], kind: str) -> None:
    if len(item) not in lengths:
        raise ValueError(
            f"a {kind} has {len(item)} fields, expected {' or '.join(map(str, lengths))}"
        )


def _check(what: str, value: Any, kind: type) -> None:
    if type(value) is not kind:
        raise ValueError(f"{what} must be {kind.__name__}, got {type(value).__name__}")


def _pair(value: Any) -> tuple[Any, Any]:
    if type(value) is not list or len(value) != 2:
        raise ValueError(f"an actor id must be [type name, key], got {value!r:.80}")
    return value[0], value[1]


def _malformed(item: Any, exc: Exception) -> Malformed:
    reason = f"malformed message: {exc}"
    if type(item) is list and len(item) > 6 and item[0] == 0:
        call_id, reply_to = item[1], item[6]
        if type(call_id) is int and type(reply_to) is str:
            return Malformed(reason, call_id, reply_to)
    return Malformed(reason)


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
