"""The copy-boundary codec: what round-trips, and what is refused clearly."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import uuid
from typing import Any

import msgpack
import pytest

from raygrain.actors import (
    ActorId,
    ActorRef,
    SerializationError,
    StateDecodeError,
    decode,
    decode_error,
    decode_state,
    encode,
    encode_error,
    encode_state,
    register_type,
)
from tests.app import Account, Color, Settings


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


class Money:
    def __init__(self, cents: int) -> None:
        self.cents = cents

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and other.cents == self.cents


register_type(Money, name="test.Money", to_data=lambda m: m.cents, from_data=Money)


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        -(2**63),
        2**64 + 1,
        1.5,
        "héllo \x00 🚀",
        b"\x00\xff",
        [1, [2, (3, 4)]],
        (1, "a", None),
        {"a": 1, 2: "b"},
        {1, 2, 3},
        frozenset({"x"}),
        dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc),
        dt.datetime(2026, 1, 2, 3, 4, 5),
        dt.date(2026, 11, 28),
        dt.time(12, 30),
        dt.timedelta(days=1, seconds=2, microseconds=3),
        uuid.UUID(int=12345),
        decimal.Decimal("1.10"),
        Color.BLUE,
        Priority.HIGH,
        Point(1, 2),
        Account(5, [1, 2]),
        Settings(Color.BLUE, ("a", "b")),
        Money(250),
        ActorRef(ActorId("test.Chain", "k")),
    ],
    ids=lambda v: type(v).__name__,
)
def test_round_trip_keeps_value_and_type(value: Any) -> None:
    back = decode(encode(value))
    assert back == value
    assert type(back) is type(value)


def test_unserializable_value_names_its_type() -> None:
    class Opaque:
        pass

    with pytest.raises(SerializationError, match=r"test_codec\..*Opaque cannot be serialized"):
        encode({"x": [Opaque()]})


def test_unknown_dataclass_on_decode_is_a_clear_error() -> None:
    @dataclasses.dataclass
    class Ghost:
        a: int = 0

    blob = encode(Ghost(1))
    Ghost.__qualname__ = "Renamed"  # the decoder can no longer find it by name
    from raygrain.actors import _codec

    _codec._known_types.clear()
    with pytest.raises(SerializationError, match="unknown dataclass"):
        decode(blob)


def test_garbage_bytes_are_a_serialization_error() -> None:
    with pytest.raises(SerializationError, match="cannot decode"):
        decode(b"\xc1\xc1\xc1")


def test_state_evolution_added_and_removed_fields() -> None:
    @dataclasses.dataclass
    class V1:
        balance: int = 0
        legacy: str = "old"

    @dataclasses.dataclass
    class V2:
        balance: int = 0
        currency: str = "EUR"

    stored = encode_state(V1(balance=7))
    assert decode_state(stored, V2) == V2(balance=7, currency="EUR")


def test_state_that_does_not_fit_names_the_actor() -> None:
    with pytest.raises(StateDecodeError, match="test.Bank/alice.*Account"):
        decode_state(encode(["not", "a", "map"]), Account, "test.Bank/alice")
    with pytest.raises(StateDecodeError, match="test.Bank/bob"):
        decode_state(b"\xc1garbage", Account, "test.Bank/bob")
    with pytest.raises(StateDecodeError, match="expected int"):
        decode_state(encode("text"), int, "test.Counter/1")


def test_an_actor_id_is_encoded_as_its_type_name_and_key_only() -> None:
    actor_id = ActorId("shop.Cart", "c1")
    data = encode(actor_id)
    assert decode(data) == actor_id
    assert decode(data).canonical() == actor_id.canonical()
    assert decode(data).stable_hash() == actor_id.stable_hash()
    ext = msgpack.unpackb(data, raw=False)
    _, fields = msgpack.unpackb(ext.data, raw=False, ext_hook=lambda code, raw: (code, raw))
    assert set(fields) == {"type_name", "key"}  # computed fields are computed again on decode


def test_an_errors_attributes_from_a_peer_never_replace_its_methods() -> None:
    """The attributes a peer sends with an error (``self.code = ...``) are set on the rebuilt
    exception; names a peer could use to replace its methods or hooks are not (a
    ``__notes__`` of 5 made decoding raise TypeError instead of giving the error)."""
    fields = decode(encode_error(ValueError("bad value"), "somewhere"))
    fields[6] = encode({"__notes__": 5, "add_note": 1, "with_traceback": 2, "code": 3})
    error = decode_error(encode(fields))
    assert isinstance(error, ValueError) and str(error) == "bad value"
    assert error.code == 3  # type: ignore[attr-defined]
    assert callable(error.add_note) and callable(error.with_traceback)


def test_an_error_raised_from_another_carries_its_cause() -> None:
    """``raise A from B`` reached the caller as ``A`` alone (its ``__cause__`` None), so code
    that looked at the cause behaved differently across a call (Orleans keeps an exception's
    ``InnerException``). Each cause comes as the type it would on its own; a loop of causes
    ends after a few."""
    try:
        try:
            try:
                raise KeyError("k")
            except KeyError as inner:
                raise LookupError("middle") from inner
        except LookupError as middle:
            raise ValueError("outer") from middle
    except ValueError as raised:
        error = decode_error(encode_error(raised, "somewhere"))
    assert isinstance(error, ValueError) and str(error) == "outer"
    assert isinstance(error.__cause__, LookupError) and str(error.__cause__) == "middle"
    assert isinstance(error.__cause__.__cause__, KeyError)
    assert error.__cause__.__cause__.args == ("k",)
    assert error.__suppress_context__  # (shown as 'the direct cause', as where it was raised)

    looped = ValueError("loop")
    looped.__cause__ = looped
    depth, cause = 0, decode_error(encode_error(looped, "somewhere")).__cause__
    while cause is not None:
        depth, cause = depth + 1, cause.__cause__
    assert 1 <= depth <= 8

    group = ExceptionGroup("several", [ValueError("one")])  # noqa: F821
    group.__cause__ = OSError("disk")
    rebuilt = decode_error(encode_error(group, "somewhere"))
    assert isinstance(rebuilt, ExceptionGroup)  # noqa: F821
    assert isinstance(rebuilt.__cause__, OSError)


class _Undecodable:
    """Encodes, but its ``from_data`` fails (a type another version of the code changed)."""


def _refuse(data: Any) -> Any:
    raise ValueError("no longer readable")


register_type(_Undecodable, name="test.Undecodable", to_data=lambda _: 1, from_data=_refuse)


def test_an_error_whose_arguments_cannot_be_decoded_still_arrives_as_itself() -> None:
    """A value in an error's ``args`` that the caller cannot decode made the whole error a
    ``MalformedMessageError`` ("its error could not be read"): the type and message were lost,
    though both had arrived."""
    error = decode_error(encode_error(LookupError("order 7 is gone", _Undecodable()), "here"))
    assert isinstance(error, LookupError)
    assert "order 7 is gone" in str(error)
