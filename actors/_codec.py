"""The msgpack codec for everything that crosses a copy boundary: arguments, results, state.

Plain msgpack values travel as themselves; richer values travel as msgpack extension types:
dataclasses and enums (by their module-qualified type name), datetimes, tuples, sets, UUIDs,
decimals, big integers, ``ActorRef`` and types registered with ``register_type``. Decoding only
ever builds dataclasses, enums and registered types, never an arbitrary class named by a peer,
and only from modules the process has already imported.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import sys
import typing
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import msgpack

from raygrain.actors._errors import (
    SerializationError,
    StateDecodeError,
)
from raygrain.actors._identity import ActorId
from raygrain.actors._ref import ActorRef, Invoker

__all__ = [
    "decode",
    "decode_state",
    "decoder",
    "encode",
    "encode_state",
    "register_type",
    "state_class",
]

_DATACLASS, _ENUM, _DATETIME, _DATE, _TIMEDELTA, _REF, _TUPLE = 1, 2, 3, 4, 5, 6, 7
_CUSTOM, _SET, _FROZENSET, _UUID, _DECIMAL, _BIGINT, _TIME = 8, 9, 10, 11, 12, 13, 14


@dataclasses.dataclass(frozen=True)
class _CustomType:
    name: str
    cls: type
    to_data: Callable[[Any], Any]
    from_data: Callable[[Any], Any]


_custom_by_type: dict[type, _CustomType] = {}
_custom_by_name: dict[str, _CustomType] = {}
_known_types: dict[str, type] = {}
_decode_invoker: ContextVar[Invoker | None] = ContextVar("raygrain_decode_invoker", default=None)


def register_type(
    cls: type,
    *,
    name: str | None = None,
    to_data: Callable[[Any], Any] | None = None,
    from_data: Callable[[Any], Any] | None = None,
) -> None:
    """Teach the codec a type. Dataclasses and enums need no ``to_data``/``from_data``;
    registering them just makes them decodable before their module is imported."""
    type_name = name or _type_name(cls)
    if to_data is None and from_data is None:
        if not (dataclasses.is_dataclass(cls) or issubclass(cls, enum.Enum)):
            raise TypeError(
                f"{cls!r}: give to_data and from_data for a type that is not a dataclass or an enum"
            )
        _known_types[type_name] = cls
        return
    if to_data is None or from_data is None:
        raise TypeError("register_type needs both to_data and from_data")
    custom = _CustomType(type_name, cls, to_data, from_data)
    _custom_by_type[cls] = custom
    _custom_by_name[type_name] = custom


def encode(value: Any) -> bytes:
    """Encode a value; raises ``SerializationError`` naming the offending type."""
    try:
        # A fresh Packer per call costs as much as the packing itself for small messages. The
        # shared one is safe: packing never awaits, and nested values use _pack, not it.
        return _packer.pack(value)  # type: ignore[no-any-return]
    except SerializationError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(str(exc)) from None
    except RecursionError:
        raise SerializationError(
            f"a {type(value).__name__} that refers to itself (a cycle) or nests too deep "
            "cannot be encoded"
        ) from None


def decode(data: bytes, invoker: Invoker | None = None) -> Any:
    """Decode a value; ``ActorRef``s in it are bound to ``invoker`` (None: the caller's turn)."""
    token = _decode_invoker.set(invoker) if invoker is not None else None
    try:
        return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except (SerializationError, KeyboardInterrupt):
        raise
    except BaseException as exc:
        # (Any BaseException: a type's own __post_init__ or from_data may raise one, and where
        # a silo decodes a call's arguments it would escape the delivery, a SystemExit stopping
        # the silo's event loop. A value that cannot be built is the message's failure.)
        raise SerializationError(f"cannot decode message: {exc!r:.200}") from None
    finally:
        if token is not None:
            _decode_invoker.reset(token)


def decoder(invoker: Invoker) -> Callable[[bytes], Any]:
    """``decode`` with ``invoker`` bound for good: what a caller decodes its results with.

    ``decode`` sets the invoker for every value; this one only when the value holds an
    extension type (an ``ActorRef`` or a registered type may need it), which most results do
    not: no context variable set and reset per call."""
    unpackb = msgpack.unpackb

    def ext_hook(code: int, data: bytes) -> Any:
        token = _decode_invoker.set(invoker)
        try:
            return _ext_hook(code, data)
        finally:
            _decode_invoker.reset(token)

    def decode_for_invoker(data: bytes) -> Any:
        try:
            return unpackb(data, ext_hook=ext_hook, raw=False, strict_map_key=False)
        except (SerializationError, KeyboardInterrupt):
            raise
        except BaseException as exc:  # (as in decode)
            raise SerializationError(f"cannot decode message: {exc!r:.200}") from None

    return decode_for_invoker


_packer = msgpack.Packer(default=lambda v: _default(v), strict_types=True, use_bin_type=True)


# -- state -----------------------------------------------------------------------------------


def encode_state(state: Any) -> bytes:
    """Encode an actor's state. A dataclass state is stored as a map of its fields, so that a
    later version of the class (fields added with defaults, fields removed) still loads it."""
    names = _field_names(type(state))
    if names is not None:
        return encode({name: getattr(state, name) for name in names})
    return encode(state)


_FIELD_NAMES: dict[type, tuple[str, ...] | None] = {}


def _field_names(cls: type) -> tuple[str, ...] | None:
    """The field names of a dataclass (None for any other type), looked up once per class:
    ``dataclasses.fields`` costs more than encoding a small state."""
    try:
        return _FIELD_NAMES[cls]
    except KeyError:
        if cls is ActorId:
            names: tuple[str, ...] | None = ("type_name", "key")  # the rest is computed
        elif dataclasses.is_dataclass(cls):
            names = tuple(f.name for f in dataclasses.fields(cls))
        else:
            names = None
        _FIELD_NAMES[cls] = names
        return names


def state_class(state_type: Any) -> type | None:
    """The class a state of ``state_type`` is an instance of: the type itself, or a generic
    alias's origin (``dict[str, int]``: ``dict``); None when there is none (a union, say)."""
    if isinstance(state_type, type):
        return state_type
    origin = typing.get_origin(state_type)
    return origin if isinstance(origin, type) else None


def decode_state(data: bytes, state_type: Any, what: str = "actor") -> Any:
    """Decode a stored state into ``state_type``; raises ``StateDecodeError`` naming ``what``."""
    try:
        raw = decode(data)
        if dataclasses.is_dataclass(state_type) and isinstance(state_type, type):
            if not isinstance(raw, dict):
                raise TypeError(f"expected a field map, found {type(raw).__name__}")
            return _build_dataclass(state_type, raw)
        expected = state_class(state_type)
        if expected is not None and not isinstance(raw, expected):
            raise TypeError(f"expected {expected.__name__}, found {type(raw).__name__}")
        return raw
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # (as in decode: a state type's __post_init__ may raise one)
        type_name = getattr(state_type, "__name__", repr(state_type))
        raise StateDecodeError(
            f"stored state of {what} cannot be decoded into {type_name}: {exc}"
        ) from None


# -- msgpack hooks ---------------------------------------------------------------------------


def _pack(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, default=_default, strict_types=True, use_bin_type=True)
    return packed


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)


def _default(value: Any) -> Any:
    custom = _custom_by_type.get(type(value))
    if custom is not None:
        return msgpack.ExtType(_CUSTOM, _pack([custom.name, custom.to_data(value)]))
    if isinstance(value, ActorRef):
        return msgpack.ExtType(_REF, _pack([value.actor_id.type_name, value.actor_id.key]))
    if isinstance(value, enum.Enum):
        return msgpack.ExtType(_ENUM, _pack([_remember(type(value)), value.value]))
    names = _field_names(type(value))
    if names is not None:
        fields = {name: getattr(value, name) for name in names}
        return msgpack.ExtType(_DATACLASS, _pack([_remember(type(value)), fields]))
    if isinstance(value, tuple):
        return msgpack.ExtType(_TUPLE, _pack(list(value)))
    if isinstance(value, dt.datetime):
        return msgpack.ExtType(_DATETIME, value.isoformat().encode())
    if isinstance(value, dt.date):
        return msgpack.ExtType(_DATE, value.isoformat().encode())
    if isinstance(value, dt.time):
        return msgpack.ExtType(_TIME, value.isoformat().encode())
    if isinstance(value, dt.timedelta):
        return msgpack.ExtType(_TIMEDELTA, _pack([value.days, value.seconds, value.microseconds]))
    if isinstance(value, frozenset):
        return msgpack.ExtType(_FROZENSET, _pack(list(value)))
    if isinstance(value, set):
        return msgpack.ExtType(_SET, _pack(list(value)))
    if isinstance(value, uuid.UUID):
        return msgpack.ExtType(_UUID, value.bytes)
    if isinstance(value, decimal.Decimal):
        return msgpack.ExtType(_DECIMAL, str(value).encode())
    if isinstance(value, int) and not isinstance(value, bool):
        return msgpack.ExtType(_BIGINT, str(int(value)).encode())
    # strict_types sends subclasses of the plain types here: encode them as their base type.
    for base in (str, bytes, float, list, dict):
        if isinstance(value, base):
            return base(value)  # type: ignore[arg-type]
    raise SerializationError(
        f"object of type {type(value).__module__}.{type(value).__qualname__} cannot be "
        "serialized (use plain values, dataclasses, enums, or actors.register_type)"
    )


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _DATACLASS:
        name, fields = _unpack(data)
        return _build_dataclass(_lookup(name, dataclass_=True), fields)
    if code == _ENUM:
        name, value = _unpack(data)
        return _lookup(name, dataclass_=False)(value)
    if code == _REF:
        type_name, key = _unpack(data)
        return ActorRef(ActorId(type_name, key), _decode_invoker.get())
    if code == _TUPLE:
        return tuple(_unpack(data))
    if code == _DATETIME:
        return dt.datetime.fromisoformat(data.decode())
    if code == _DATE:
        return dt.date.fromisoformat(data.decode())
    if code == _TIME:
        return dt.time.fromisoformat(data.decode())
    if code == _TIMEDELTA:
        days, seconds, micros = _unpack(data)
        return dt.timedelta(days=days, seconds=seconds, microseconds=micros)
    if code == _SET:
        return set(_unpack(data))
    if code == _FROZENSET:
        return frozenset(_unpack(data))
    if code == _UUID:
        return uuid.UUID(bytes=data)
    if code == _DECIMAL:
        return decimal.Decimal(data.decode())
    if code == _BIGINT:
        return int(data.decode())
    if code == _CUSTOM:
        name, payload = _unpack(data)
        custom = _custom_by_name.get(name)
        if custom is None:
            raise SerializationError(f"unknown registered type {name!r}: register_type() it")
        return custom.from_data(payload)
    raise SerializationError(f"unknown extension type code {code}")


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _remember(cls: type) -> str:
    name = _type_name(cls)
    _known_types.setdefault(name, cls)
    return name


def _lookup(name: str, *, dataclass_: bool) -> type:
    cls = _known_types.get(name) or _find_imported(name)
    ok = (
        dataclasses.is_dataclass(cls)
        if dataclass_
        else isinstance(cls, type) and issubclass(cls, enum.Enum)
    )
    if cls is None or not ok:
        kind = "dataclass" if dataclass_ else "enum"
        raise SerializationError(
            f"unknown {kind} {name!r}: import its module in this process or register_type() it"
        )
    assert isinstance(cls, type)
    _known_types[name] = cls
    return cls


def _find_imported(name: str) -> type | None:
    # Walk the longest already-imported module prefix; never import on a peer's say-so.
    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:split]))
        if module is None:
            continue
        obj: Any = module
        for attr in parts[split:]:
            obj = getattr(obj, attr, None)
        return obj if isinstance(obj, type) else None
    return None


def _build_dataclass(cls: type, fields: dict[str, Any]) -> Any:
    init_fields = {f.name for f in dataclasses.fields(cls) if f.init}
    obj = cls(**{k: v for k, v in fields.items() if k in init_fields})
    for f in dataclasses.fields(cls):
        if not f.init and f.name in fields:
            object.__setattr__(obj, f.name, fields[f.name])
    return obj
