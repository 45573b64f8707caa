"""A Cluster.connect client following its deployment's controller (RayBackend._follow_view),
with stand-in controller handles: no Ray runs here."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from raygrain.runtime.kernel import MembershipView, SiloOptions, SiloStatus, view_to_wire
from raygrain.runtime.ray_host import _launcher
from raygrain.runtime.ray_host._actors import CONTROLLER_NAME
from raygrain.runtime.ray_host._launcher import RayBackend
from tests.helpers import wait_until


class _Method:
    def __init__(self, answer: Any) -> None:
        self._answer = answer

    async def remote(self, *args: Any) -> Any:
        if isinstance(self._answer, BaseException):
            raise self._answer
        if self._answer is None:
            await asyncio.Event().wait()  # a long poll with nothing new: for ever
        return self._answer


class _Controller:
    """A controller's actor handle: ``get_view`` and ``wait_view`` answer (or raise) as given."""

    def __init__(self, actor_id: str, get_view: Any, wait_view: Any = None) -> None:
        self._actor_id = actor_id
        self.get_view = _Method(get_view)
        self.wait_view = _Method(wait_view)


async def test_a_client_keeps_following_when_a_new_controller_fails_as_it_reaches_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The deployment is brought up again under its name, and the first new controller the
    client finds dies before answering (its launch failed and stopped it): the client looks
    again and follows the next one. (That error ended the client's following for good: it
    never reached the deployment again.)"""
    dead = RuntimeError("the actor died")
    view = view_to_wire(MembershipView(1).with_status("silo-new", SiloStatus.ACTIVE))
    found = iter([_Controller("second", dead), _Controller("third", view)])
    monkeypatch.setattr(
        _launcher,
        "lookup",
        lambda name, namespace: next(found, None) if name == CONTROLLER_NAME else None,
    )
    backend = RayBackend(None, None, SiloOptions(), deployment="shop", transport="ray")
    backend._controller = _Controller("first", dead, wait_view=dead)
    follower = asyncio.ensure_future(backend._follow_view())
    try:
        await wait_until(
            lambda: follower.done() or list(backend.membership.view.active()) == ["silo-new"],
            "the client following the third controller",
        )
        assert not follower.done(), follower.exception()
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        await backend.ray_transport.aclose()
