"""The Ray transport's batches that cannot be delivered: each call in them fails at once with the
retryable error, told to whoever waits for it (this endpoint, or the caller of a call it
forwarded), instead of waiting for its deadline."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgpack
import pytest

from raygrain.actors import (
    ActorId,
    MalformedMessageError,
    SiloUnavailableError,
    decode_error,
    encode,
)
from raygrain.runtime.kernel import (
    MembershipView,
    Request,
    Response,
    SiloOptions,
    SiloStatus,
    pack_batch,
    unpack_batch,
)
from raygrain.runtime.ray_host import RayTransport
from raygrain.runtime.ray_host._host import SiloHostImpl
from raygrain.storage import MemoryStorage
from tests.app import Chain
from tests.helpers import wait_until


class _Endpoint:
    def __init__(self) -> None:
        self.responses: list[Response] = []

    def deliver_response(self, response: Response, sender: str | None = None) -> None:
        self.responses.append(response)


def _gone(name: str) -> Any:
    raise ValueError(f"no actor {name}")  # what resolving a dead silo's handle raises


async def test_an_undeliverable_batch_fails_own_and_forwarded_calls_to_their_callers() -> None:
    transport = RayTransport("silo-a", _gone)
    local = _Endpoint()
    transport.bind(local)
    target = ActorId("test.Recorder", "k")
    own = Request(1, target, "record", b"", "silo-a", 30.0)
    forwarded = Request(2, target, "record", b"", "client-x", 30.0, hops=1)
    transport.send("silo-b", own)
    transport.send("silo-b", forwarded)
    try:
        await wait_until(lambda: local.responses, "the own call's failure")
        assert [r.call_id for r in local.responses] == [1]
        # The forwarded call's caller is a driver-side client: its answers wait in its mailbox.
        answers = await asyncio.wait_for(transport.mailbox("client-x").take(5.0), 10)
    finally:
        await transport.aclose()
    assert [r.call_id for r in answers] == [2]
    error = decode_error(answers[0].payload)
    assert isinstance(error, SiloUnavailableError)
    assert "Recorder" in str(error) and "silo-b" in str(error)


class _Polled:
    """A silo's Ray actor handle whose polls return the batches given, then wait for ever."""

    def __init__(self, *batches: bytes) -> None:
        self.batches = list(batches)
        self.poll = self

    def remote(self, *args: Any) -> asyncio.Future[bytes]:
        answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        if self.batches:
            answer.set_result(self.batches.pop(0))
        return answer


class _Raising(_Endpoint):
    """An endpoint that cannot take one of the responses (a notice it cannot decode)."""

    def deliver_response(self, response: Response, sender: str | None = None) -> None:
        if response.call_id < 0:
            raise TypeError("cannot unpack non-iterable int object")
        super().deliver_response(response, sender)


@pytest.mark.parametrize(
    "bad",
    [
        # A response the client cannot take (an observer notice that is not ``[observer,
        # method, args]``: its decode raised TypeError).
        pytest.param(pack_batch([Response(-1, True, encode(5))]), id="undecodable-notice"),
        # An answer that is not a batch at all (not msgpack).
        pytest.param(b"\xc1", id="no-batch"),
    ],
)
async def test_a_bad_polled_answer_does_not_end_the_poll(bad: bytes) -> None:
    """The bad answer is left out (and logged), the rest delivered, and the client keeps
    polling: the poll's task died of it, and no answer from that silo came again (its callers
    waited out their deadlines)."""
    handle = _Polled(bad, pack_batch([Response(7, True, encode(1))]))
    transport = RayTransport("client-x", lambda name: handle)
    local = _Raising()
    transport.bind(local)
    transport.ensure_polling("silo-a")
    try:
        await wait_until(lambda: local.responses, "the answer after the bad one")
    finally:
        await transport.aclose()
    assert [r.call_id for r in local.responses] == [7]


class _SlowToFind:
    """A silo's Ray handle as ``resolve`` gives it: finding it blocks its thread (Ray's
    ``get_actor`` asks the GCS), and its ``wire_address`` call never answers (a stuck silo)."""

    def __init__(self) -> None:
        self.wire_address = self
        self.threads: list[int] = []

    def __call__(self, name: str) -> _SlowToFind:
        import threading
        import time

        self.threads.append(threading.get_ident())
        time.sleep(0.3)
        return self

    def remote(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()  # never answered


async def test_the_locator_finds_silos_off_the_loop_and_gives_up_on_one_never_answering() -> None:
    # The first lookup of a silo called Ray's blocking get_actor on the event loop (every call
    # of the endpoint stalled meanwhile), and a silo that never answered its wire_address held
    # the dial, and the calls waiting on it, for ever.
    import threading

    from raygrain.runtime.ray_host._direct import Locator

    handle = _SlowToFind()
    locator = Locator(handle, timeout=0.2)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.ensure_future(tick())
    try:
        try:
            await locator("silo-b")
        except TimeoutError as exc:
            assert "silo-b" in str(exc)
        else:
            raise AssertionError("a silo that never answers was located")
    finally:
        ticker.cancel()
    assert handle.threads and threading.get_ident() not in handle.threads
    assert ticks > 5  # the loop ran while the handle was being found


def _bad_request(call_id: int, reply_to: str) -> bytes:
    """A batch of one request that says who to answer but has a negative timeout."""
    item = [0, call_id, "test.Chain", "k", "ping", b"", reply_to, -1.0, [], 0, None, 1]
    return msgpack.packb([item], use_bin_type=True)  # type: ignore[no-any-return]


async def test_malformed_messages_over_ray_warn_once_per_sender(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A silo's Ray actor warned of every malformed message and batch it was sent, so a peer
    sending junk flooded the log. As on the direct plane (``wire.PeerLog``): one warning per
    sender a minute, the rest at debug; every malformed call is still answered."""
    caplog.set_level(logging.DEBUG, logger="raygrain")
    host = SiloHostImpl("silo-a", "node", [Chain], MemoryStorage(), SiloOptions(), None, None)
    host.membership.update(MembershipView(1, (("silo-a", SiloStatus.ACTIVE),)))
    host.silo.start()
    client = "client-0123"
    answers: dict[int, Response] = {}
    try:
        for call_id in range(1, 41):
            await host.receive_batch(_bad_request(call_id, client), client)
            await host.receive_batch(b"\xc1", client)  # not msgpack at all
        await host.receive_batch(_bad_request(41, client), "silo-b")  # another sender
        while len(answers) < 41:  # (a malformed call's answer comes by the client's poll)
            for message in unpack_batch(await asyncio.wait_for(host.poll(client), 30)):
                assert isinstance(message, Response)
                answers[message.call_id] = message
    finally:
        await host.silo.aclose()
        await host.transport.aclose()
    assert all(isinstance(decode_error(a.payload), MalformedMessageError) for a in answers.values())
    malformed = [r for r in caplog.records if "malformed" in r.getMessage()]
    warned = [r for r in malformed if r.levelno >= logging.WARNING]
    assert len(warned) == 2, [r.getMessage() for r in warned]  # one per sender
    assert len(malformed) == 81  # the rest at debug
