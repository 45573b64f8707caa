"""The Ray transport's batches that cannot be delivered: each call in them fails at once with the
retryable error, told to whoever waits for it (this endpoint, or the caller of a call it
forwarded), instead of waiting for its deadline."""

from __future__ import annotations

import asyncio
from typing import Any

from raygrain.actors import ActorId, SiloUnavailableError, decode_error
from raygrain.runtime.kernel import Request, Response
from raygrain.runtime.ray_host import RayTransport
from tests.helpers import wait_until


class _Endpoint:
    def __init__(self) -> None:
        self.responses: list[Response] = []

    def deliver_response(self, response: Response) -> None:
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
