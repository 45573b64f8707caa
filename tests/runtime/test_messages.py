"""Message envelopes and the storage client's wire: what crosses between processes on Ray."""

from __future__ import annotations

import asyncio
import enum
from types import SimpleNamespace
from typing import Any

import pytest

from raygrain.actors import ActorId, StorageError
from raygrain.runtime.kernel import Request, Response, key_from_wire, pack_batch, unpack_batch
from raygrain.runtime.ray_host import RemoteStorage
from tests.helpers import wait_until

KEYS: list[str | int] = [
    0,
    -1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    -(2**63),
    -(2**63) - 1,
    2**70,
    "\ud800 lone surrogate",
    '["123"]',
    "123",
    "",
]


@pytest.mark.parametrize("key", KEYS, ids=[f"key{i}" for i in range(len(KEYS))])
def test_every_valid_key_crosses_a_batch_unchanged(key: str | int) -> None:
    target, other = ActorId("Ünï\x00Type", key), ActorId("T", key)
    request = Request(1, target, "m", b"", "client", 1.0, chain=(other,))
    response = Response(1, True, b"", joined=(target, other))
    got_request, got_response = unpack_batch(pack_batch([request, response]))
    assert isinstance(got_request, Request) and isinstance(got_response, Response)
    for got, sent in [
        (got_request.target, target),
        (got_request.chain[0], other),
        (got_response.joined[0], target),
    ]:
        assert got == sent and type(got.key) is type(sent.key)


class Shelf(enum.IntEnum):
    LOW = 3
    HIGH = 2**70


@pytest.mark.parametrize("key", list(Shelf), ids=["small", "beyond_64_bits"])
def test_an_int_enum_key_crosses_as_the_int_it_equals(key: Shelf) -> None:
    # (A range's membership test scans for an int subclass: this key used to hang the send.)
    target = ActorId("T", key)
    request = Request(1, target, "m", b"", "client", 1.0, chain=(target,))
    [got] = unpack_batch(pack_batch([request]))
    assert isinstance(got, Request)
    assert got.target == target == ActorId("T", int(key)) and type(got.target.key) is int
    assert got.chain == (target,)


@pytest.mark.parametrize("text", [" 12", "1_000", "١٢", "-", "01", "--1", "-0", ""])
def test_only_the_exact_text_of_a_big_int_key_is_read_as_one(text: str) -> None:
    assert key_from_wire([text]) == [text]  # left for ActorId to refuse


@pytest.mark.parametrize("when", ["before_it_is_sent", "while_it_waits"])
async def test_a_cancelled_storage_call_tells_its_queued_writes(when: str) -> None:
    # (A loop that shuts down cancels its tasks.) A queued write's turn waits for its callback:
    # never called, the turn would never end.
    never: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    sent: list[bytes] = []

    def execute(blob: bytes) -> asyncio.Future[bytes]:
        sent.append(blob)
        return never  # a storage server that never answers

    storage = RemoteStorage(SimpleNamespace(execute=SimpleNamespace(remote=execute)))
    told: list[Any] = []
    storage.queue_write(ActorId("T", 1), b"x", None, told.append)
    await wait_until(lambda: bool(storage._flushes), "the flush task")  # (white-box)
    if when == "while_it_waits":
        await wait_until(lambda: bool(sent), "the flush to send")
    for flush in list(storage._flushes):
        flush.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flush
    assert [type(outcome) for outcome in told] == [StorageError]
    assert len(sent) == (1 if when == "while_it_waits" else 0)


def test_responses_with_and_without_joined_actors_survive_a_batch_round_trip() -> None:
    # A response has 4 fields, 5 with the actors that joined a transaction: both must pass the
    # batch's checks (with (5, 6) every plain answer on Ray was dropped as malformed).
    from raygrain.actors import ActorId
    from raygrain.runtime.kernel import Response, pack_batch, unpack_batch

    sent = [Response(5, True, b"x"), Response(6, False, b"y", (ActorId("t.A", "k"),))]
    rejected: list[object] = []
    assert unpack_batch(pack_batch(sent), on_malformed=rejected.append) == sent
    assert rejected == []
