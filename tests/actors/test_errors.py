"""Every error pickles and survives the msgpack error codec with its type and arguments."""

from __future__ import annotations

import pickle

import pytest

import raygrain.actors._errors
from raygrain.actors import (
    InconsistentStateError,
    MalformedMessageError,
    RaygrainError,
    RemoteActorError,
    SagaFailedError,
    WrongExpectedVersionError,
    decode_error,
    encode,
    encode_error,
)
from raygrain.actors._errors import error_types


def _instances() -> list[RaygrainError]:
    made: list[RaygrainError] = []
    for name, cls in sorted(error_types().items()):
        if cls is InconsistentStateError:
            made.append(cls("3", "2", "test.Bank/alice"))
        elif cls is WrongExpectedVersionError:
            made.append(cls("orders/o-1", 3, 4))
        elif cls is RemoteActorError:
            made.append(cls("pkg.Boom", "it broke", "Traceback ..."))
        elif cls is SagaFailedError:
            made.append(cls("trip-1", "compensated", "step 'pay' failed"))
        else:
            made.append(cls(f"{name} happened"))
    return made


@pytest.mark.parametrize("error", _instances(), ids=lambda e: type(e).__name__)
def test_error_pickles(error: RaygrainError) -> None:
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error) and back.args == error.args and str(back) == str(error)


@pytest.mark.parametrize("error", _instances(), ids=lambda e: type(e).__name__)
def test_error_survives_the_wire(error: RaygrainError) -> None:
    back = decode_error(encode_error(error, "test.X/1.m on silo-0"))
    assert type(back) is type(error) and back.args == error.args


def test_every_error_is_exported_and_drawn_in_the_tree() -> None:
    doc = raygrain.actors._errors.__doc__ or ""
    for name, cls in error_types().items():
        assert getattr(raygrain.actors, name) is cls
        assert name in doc, f"{name} is missing from the tree in actors/_errors.py"


def test_inconsistent_state_error_carries_both_etags() -> None:
    error = InconsistentStateError("7", "5", "test.Bank/alice")
    assert (error.stored_etag, error.expected_etag) == ("7", "5")
    assert "stored '7', expected '5'" in str(error)


@pytest.mark.parametrize(
    "payload",
    [
        encode(5),
        encode(["module", "Name"]),
        encode(["module", "Name", 5, "message", "where", "text"]),
        encode([1, 2, encode([]), 3, 4, 5, 6]),
        encode(["raygrain.actors._errors", "StorageError", encode(5), "m", "w", "t"]),
        b"\xc1",
        b"",
    ],
    ids=["int", "short", "args-not-bytes", "ints", "own-error-args-not-list", "garbage", "empty"],
)
def test_an_error_answer_that_is_no_error_record_is_a_malformed_message(payload: bytes) -> None:
    # A peer's bug or another version: the caller gets a typed error saying what it got, not
    # a builtin TypeError or ValueError out of the decoder.
    error = decode_error(payload)
    assert isinstance(error, MalformedMessageError), repr(error)
    assert "could not be read" in str(error)
