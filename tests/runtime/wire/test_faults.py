"""Faults on the direct plane between real sockets on 127.0.0.1: a broken silo-to-silo
connection under forwarded calls, and peers that do not read what is written to them."""

from __future__ import annotations

import asyncio

import pytest

from raygrain.actors import ActorCallTimeout, ActorId, SiloUnavailableError
from raygrain.runtime.kernel import Membership, SiloStatus
from raygrain.runtime.wire import WireOptions
from tests.app import Recorder
from tests.runtime.wire._silos import SECRET, Client, Directory, SiloInThread


def _key_owned_by(silo: str, silos: list[str]) -> str:
    membership = Membership()
    for name in silos:
        membership.set_status(name, SiloStatus.ACTIVE)
    return next(
        key
        for key in (f"k{i}" for i in range(1000))
        if membership.ring.owner(ActorId("test.Recorder", key)) == silo
    )


async def test_a_forwarded_call_fails_at_once_when_the_silo_to_silo_connection_breaks() -> None:
    """The client routes by an older view (silo-a alone); silo-a forwards the call to silo-b,
    its owner by the current view, and the connection between the silos breaks while the call
    runs there. Whether it ran is unknown: the caller gets ``SiloUnavailableError`` now, not
    ``ActorCallTimeout`` at its deadline."""
    names = ["silo-a", "silo-b"]
    directory = Directory()
    silo_a, silo_b = (SiloInThread(name, directory, WireOptions(SECRET), names) for name in names)
    client = Client(directory, WireOptions(SECRET), ["silo-a"])  # an older view
    client.transport.connect("silo-b")  # answers come straight from the silo that ran the call
    key = _key_owned_by("silo-b", names)
    ref = client.ref(Recorder, key)
    try:
        call = asyncio.ensure_future(ref.wait_for("forwarded-cut"))
        await _until(lambda: silo_b.silo.calls_received >= 1)  # running on silo-b (forwarded)
        assert silo_a.silo.calls_received >= 1
        await silo_a.run_async(_close_link(silo_a, "silo-b"))
        with pytest.raises(SiloUnavailableError, match="may or may not have run"):
            await call
        # The silos reconnect; the call itself was never re-sent.
        await ref.release("forwarded-cut")
        assert await ref.wait_for("forwarded-cut") == "released"
    except ActorCallTimeout:
        pytest.fail("the forwarded call waited for its deadline")
    finally:
        await client.aclose()
        silo_a.stop()
        silo_b.stop()


async def _close_link(silo: SiloInThread, destination: str) -> None:
    """(On the silo's loop) close its connection to ``destination``: a network fault between
    the two silos only."""
    link = silo.transport._links[destination]  # (white-box: one connection out of several)
    assert link.connection is not None
    link.connection.close()


async def _until(condition: object, limit: float = 60.0) -> None:
    """Wait for ``condition()`` (a guard against hanging, not a timing assertion)."""
    assert callable(condition)
    async with asyncio.timeout(limit):
        while not condition():
            await asyncio.sleep(0.01)
