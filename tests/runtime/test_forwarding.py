"""Forwarded calls and who may answer a call.

A silo that gets a call for an actor it does not own (the sender's view was older or newer)
passes it on as a call of its own and relays the answer. So a forwarded call whose new owner
dies fails at once instead of hanging to its deadline (it used to: the new owner answered the
caller directly, and the caller knew only the first silo; found after a controller restart on
Ray, tests/ray/test_failover.py::test_controller_restarted_by_ray_carries_on), and a caller can
take an answer only from the silo it sent the call to.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from raygrain.actors import ActorId, SiloUnavailableError, encode
from raygrain.runtime.kernel import (
    ActorRegistry,
    Caller,
    CallSettings,
    LocalTransport,
    Membership,
    MembershipView,
    Response,
    Silo,
    SiloOptions,
    SiloStatus,
    SystemClock,
    pack_batch,
)
from raygrain.runtime.ray_host._host import SiloHostImpl
from raygrain.storage import MemoryStorage
from tests import app
from tests.app import GATES, gate
from tests.helpers import bounded, still_pending, wait_until

ACTIVE = SiloStatus.ACTIVE
DEAD = SiloStatus.DEAD
BOTH = MembershipView(2, (("silo-a", ACTIVE), ("silo-b", ACTIVE)))


@dataclass
class TwoSilos:
    transport: LocalTransport
    a: Silo
    b: Silo
    client: Caller
    client_view: Membership


@pytest.fixture
async def two_silos() -> AsyncIterator[TwoSilos]:
    transport = LocalTransport()
    registry = ActorRegistry(app.ALL_ACTORS)
    storage = MemoryStorage()
    silos = []
    for name in ("silo-a", "silo-b"):
        membership = Membership()
        membership.update(BOTH)
        silo = Silo(name, registry, storage, transport, membership, SystemClock())
        transport.register_silo(name, silo)
        silo.start()
        silos.append(silo)
    client_view = Membership()
    client_view.update(MembershipView(1, (("silo-a", ACTIVE),)))  # a view behind the silos'
    client = Caller("client", transport, client_view, registry, CallSettings())
    transport.register("client", client)
    yield TwoSilos(transport, silos[0], silos[1], client, client_view)
    client.close()
    for silo in silos:
        await silo.aclose()


def _owned_by_b(silo: Silo, prefix: str) -> ActorId:
    ring = silo.membership.ring
    ids = (ActorId("test.Recorder", f"{prefix}{i}") for i in range(10_000))
    return next(actor_id for actor_id in ids if ring.owner(actor_id) == "silo-b")


async def test_a_forwarded_call_is_answered_through_the_silo_it_was_sent_to(
    two_silos: TwoSilos,
) -> None:
    target = _owned_by_b(two_silos.a, "relayed")
    # The client's view has only silo-a; silo-a forwards the call to silo-b, its owner.
    assert await two_silos.client.invoke(target, "record", ("t",), {}, 30.0)
    assert target in two_silos.b.activations and target not in two_silos.a.activations
    assert not two_silos.a.caller._pending  # (white-box) the relayed call is done with


async def test_a_silo_behind_its_caller_s_view_routes_the_call_once_it_caught_up(
    two_silos: TwoSilos,
) -> None:
    """The client's view is newer than the silos' (silo-b declared dead; the silos have not
    heard yet): silo-a, picked by that view, waits for its own view to catch up rather than
    pass the call on to silo-b by its older ring (a silo the caller knows is dead: found on
    Ray, where the call failed with SiloUnavailableError after a controller restart), then
    routes it by the new ring. From a caller whose view is older, silo-a passes the call on
    at once (the test before)."""
    a, b = two_silos.a, two_silos.b
    newer = MembershipView(3, (("silo-a", ACTIVE), ("silo-b", DEAD)))
    two_silos.client_view.update(newer)
    target = _owned_by_b(a, "newer")
    call = asyncio.ensure_future(two_silos.client.invoke(target, "record", ("t",), {}, 30.0))
    assert await still_pending(call), "silo-a routed the call by its older view"
    assert target not in b.activations
    a.membership.update(newer)  # silo-a's view arrives: by it, silo-a owns the actor
    assert await bounded(call, "the call, once silo-a's view caught up")
    assert target in a.activations and target not in b.activations


async def test_a_silo_whose_view_does_not_catch_up_runs_the_call_its_caller_picked(
    two_silos: TwoSilos,
) -> None:
    """Its view does not come in time (half the call's timeout, 5 s at most): the caller's
    pick, made by the newer view, stands."""
    a, b = two_silos.a, two_silos.b
    two_silos.client_view.update(MembershipView(3, (("silo-a", ACTIVE), ("silo-b", DEAD))))
    target = _owned_by_b(a, "never")
    assert await bounded(two_silos.client.invoke(target, "record", ("t",), {}, 1.0), "the call")
    assert target in a.activations and target not in b.activations


async def test_a_call_forwarded_to_a_silo_that_dies_fails_when_it_is_declared_dead(
    two_silos: TwoSilos,
) -> None:
    a = two_silos.a
    target = _owned_by_b(a, "forwarded")
    call = asyncio.ensure_future(two_silos.client.invoke(target, "wait_for", ("fwd",), {}, 3600))
    await wait_until(lambda: "fwd" in GATES, "the call to run on silo-b")
    two_silos.transport.unregister("silo-b")  # silo-b's process is gone, the call unanswered
    try:
        # What a silo does for the silos its new view declares dead (SiloHostImpl.apply_view).
        assert a.caller.fail_calls_to("silo-b") == 1
        with pytest.raises(SiloUnavailableError, match="silo-b died while"):
            await bounded(call, "the forwarded call to fail")
    finally:
        gate("fwd").set()  # (silo-b's turn ends, so that it closes at once)


async def test_a_caller_takes_an_answer_only_from_the_silo_it_sent_the_call_to() -> None:
    transport = LocalTransport()
    transport.register_silo("silo-b", _Unanswered())
    caller = Caller("client-x", transport, _view_of("silo-b"), ActorRegistry(()), CallSettings())
    call = asyncio.ensure_future(
        caller.invoke(ActorId("test.Recorder", "k"), "record", ("t",), {}, 3600)
    )
    await wait_until(lambda: bool(caller._pending), "the call to be sent")
    [call_id] = caller._pending  # (white-box: what a peer that saw the call would know)
    caller.deliver_response(Response(call_id, True, encode("forged")), "silo-c")
    assert await still_pending(call), "an answer from another silo completed the call"
    assert caller.responses_refused == 1
    caller.deliver_response(Response(call_id, True, encode("genuine")), "silo-b")
    assert await call == "genuine"
    caller.close()


class _Unanswered:
    """A silo that takes requests and never answers (the call stays pending)."""

    def deliver_request(self, request: Any) -> None:
        pass

    def deliver_response(self, response: Response, sender: str | None = None) -> None:
        pass


def _view_of(*silos: str) -> Membership:
    membership = Membership()
    membership.update(MembershipView(1, tuple((name, ACTIVE) for name in silos)))
    return membership


class _Unanswering:
    """A silo's Ray actor handle whose batches are taken and never answered."""

    def __init__(self) -> None:
        self.receive_batch = self
        self.poll = self

    def remote(self, *args: Any) -> asyncio.Future[bytes]:
        return asyncio.get_running_loop().create_future()


async def test_a_silo_on_ray_takes_answers_only_from_the_silo_it_called() -> None:
    handle = _Unanswering()
    host = SiloHostImpl(
        "silo-a",
        "node",
        list(app.ALL_ACTORS),
        MemoryStorage(),
        SiloOptions(),
        lambda name: handle,
        controller=None,
    )
    host.membership.update(MembershipView(1, (("silo-b", ACTIVE),)))
    caller = host.silo.caller
    call = asyncio.ensure_future(
        caller.invoke(ActorId("test.Recorder", "k"), "record", ("t",), {}, 3600)
    )
    await wait_until(lambda: bool(caller._pending), "the call to be sent")
    [call_id] = caller._pending
    forged = pack_batch([Response(call_id, True, encode("forged"))])
    # Anyone who can call the silo's Ray actor can send it a batch, naming any sender.
    await host.receive_batch(forged, "silo-c")
    await host.receive_batch(forged, "client-0123")
    assert await still_pending(call), "an answer from another endpoint completed the call"
    await host.receive_batch(pack_batch([Response(call_id, True, encode(7))]), "silo-b")
    assert await call == 7
    await host.stop()
