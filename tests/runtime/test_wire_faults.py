"""Malformed messages and overload: each bad message is refused on its own, with a typed reply
where it can be addressed; a full actor queue refuses calls at once instead of growing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from raygrain.actors import (
    ActorId,
    ActorOverloadedError,
    ConfigurationError,
    MalformedMessageError,
    decode_error,
    encode,
)
from raygrain.runtime import Cluster
from raygrain.runtime.kernel import Malformed, Request, Response, pack, pack_batch, unpack_batch
from tests import app
from tests.app import GATES, Recorder, gate


def _request(call_id: int, key: str, reply_to: str = "probe") -> list[Any]:
    target = ActorId("test.Recorder", key)
    return Request(call_id, target, "record", encode([["t"], {}]), reply_to, 30.0).to_wire()


def test_one_malformed_request_is_left_out_and_the_rest_of_its_batch_is_read() -> None:
    bad = _request(99, "bad")
    bad[7] = "soon"  # a timeout that is not a number
    blob = pack([bad, *(_request(i, f"k{i}") for i in range(1, 6))])
    refused: list[Malformed] = []
    messages = unpack_batch(blob, on_malformed=refused.append)
    assert [m.call_id for m in messages] == [1, 2, 3, 4, 5]
    assert [(m.call_id, m.reply_to) for m in refused] == [(99, "probe")]
    assert "timeout" in refused[0].reason


@pytest.mark.parametrize(
    "item",
    [
        "text",
        [],
        [7],
        [0, 1],
        [0, "id", "test.Recorder", "k", "record", b"", "probe", 1.0, [], 0, None, -1],
        [0, 1, "test.Recorder", {"k": 1}, "record", b"", "probe", 1.0, [], 0, None, -1],
        [0, 1, "test.Recorder", "k", "record", "not bytes", "probe", 1.0, [], 0, None, -1],
        [0, 1, "test.Recorder", "k", "record", b"", "probe", float("nan"), [], 0, None, -1],
        [0, 1, "test.Recorder", "k", "record", b"", "probe", 1.0, [["x"]], 0, None, -1],
        [1, "id", True, b""],
        [1, 1, "yes", b""],
    ],
    ids=[
        "not-a-list",
        "empty",
        "unknown-kind",
        "short",
        "text-call-id",
        "map-key",
        "text-payload",
        "nan-timeout",
        "bad-chain",
        "response-text-id",
        "response-text-ok",
    ],
)
def test_every_kind_of_garbage_is_refused_on_its_own(item: Any) -> None:
    refused: list[Malformed] = []
    good = _request(1, "good")
    assert [m.call_id for m in unpack_batch(pack([item, good]), refused.append)] == [1]
    assert len(refused) == 1 and refused[0].reason.startswith("malformed message")


@pytest.mark.parametrize(
    ("field", "bad"),
    [(5, "text"), (7, float("nan")), (7, -1.0), (8, [["x"]]), (9, "0"), (10, "tx"), (11, None)],
    ids=["payload", "nan-timeout", "negative-timeout", "chain", "hops", "transaction", "view"],
)
def test_a_bad_field_is_refused_for_an_actor_seen_before(field: int, bad: Any) -> None:
    # (An actor seen before takes the batch's quick path: its checks must be the same.)
    good = _request(1, "seen")
    assert [m.call_id for m in unpack_batch(pack([good]))] == [1]
    item = _request(2, "seen")
    item[field] = bad
    refused: list[Malformed] = []
    assert [m.call_id for m in unpack_batch(pack([item, good]), refused.append)] == [1]
    assert [(m.call_id, m.reply_to) for m in refused] == [(2, "probe")]


@pytest.mark.parametrize(
    "blob", [b"\xc1", pack({"a": 1}), b""], ids=["not-msgpack", "map", "empty"]
)
def test_a_batch_that_is_not_a_list_of_messages_is_a_typed_error(blob: bytes) -> None:
    with pytest.raises(MalformedMessageError):
        unpack_batch(blob)


async def test_a_silo_answers_a_malformed_request_with_a_typed_error_and_serves_the_rest(
    cluster: Cluster,
) -> None:
    answers: list[Response] = []

    class Probe:
        def deliver_response(self, response: Response) -> None:
            answers.append(response)

    transport = cluster._backend.transport  # type: ignore[attr-defined]  # (white-box)
    transport.register("probe", Probe())
    silo = cluster.silos[0]
    bad = _request(99, "bad")
    bad[7] = "soon"
    blob = pack([bad, *(_request(i, f"k{i}") for i in range(1, 6))])
    for message in unpack_batch(blob, on_malformed=silo.reply_malformed):
        assert isinstance(message, Request)
        silo.deliver_request(message)
    for _ in range(10_000):
        if len(answers) == 6:
            break
        await asyncio.sleep(0)
    by_id = {a.call_id: a for a in answers}
    assert sorted(by_id) == [1, 2, 3, 4, 5, 99]
    assert all(by_id[i].ok for i in range(1, 6))
    assert not by_id[99].ok
    assert isinstance(decode_error(by_id[99].payload), MalformedMessageError)
    assert await cluster.get(Recorder, "k1").entries() == ["start t", "end t"]


async def test_a_full_queue_refuses_calls_at_once_and_serves_the_queued_ones() -> None:
    async with Cluster.local(actors=app.ALL_ACTORS, max_queued_calls=3) as cluster:
        busy = cluster.get(Recorder, "busy")
        running = asyncio.ensure_future(busy.wait_for("full-queue"))
        for _ in range(10_000):  # until the first call holds the actor
            if "full-queue" in GATES:
                break
            await asyncio.sleep(0)
        queued = [asyncio.ensure_future(busy.record(f"q{i}")) for i in range(3)]
        target = ActorId("test.Recorder", "busy")
        activation = next(s.activations[target] for s in cluster.silos if target in s.activations)
        for _ in range(10_000):  # (white-box) until the three wait in the actor's queue
            if activation.queued() == 3:
                break
            await asyncio.sleep(0)
        assert activation.queued() == 3, "the calls never queued"
        with pytest.raises(ActorOverloadedError, match=r"3 calls queued \(max_queued_calls\)"):
            await busy.record("one too many")
        assert not any(call.done() for call in queued)
        gate("full-queue").set()
        assert await running == "released"
        assert len(await asyncio.gather(*queued)) == 3


@pytest.mark.parametrize("bad", [0, -1, 1.5, "10"])
async def test_max_queued_calls_must_be_a_positive_int(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="max_queued_calls must be an int >= 1"):
        Cluster.local(actors=app.ALL_ACTORS, max_queued_calls=bad)


@pytest.mark.parametrize(
    "message",
    [
        Response(7, True, b"\x01"),
        Response(8, False, b"err", (ActorId("test.Vault", "a"), ActorId("test.Vault", 2))),
        Request(9, ActorId("test.Recorder", "k"), "record", b"", "probe", 2.5),
        Request(
            10,
            ActorId("test.Recorder", 3),
            "record",
            b"x",
            "probe",
            1,
            (ActorId("test.Chain", "c"),),
            2,
            b"tx",
            4,
        ),
    ],
    ids=["response", "response-joined", "request", "request-every-field"],
)
def test_every_valid_envelope_survives_the_checks(message: Request | Response) -> None:
    refused: list[Malformed] = []
    assert unpack_batch(pack_batch([message]), refused.append) == [message]
    assert refused == []
