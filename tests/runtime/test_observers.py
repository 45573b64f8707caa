"""Observers: a client's (or an activation's) object that actors push notifications to, and
``ObserverSet`` dropping the observers that were not renewed (Orleans' ObserverManager)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from raygrain import ConfigurationError, ObserverRef, ObserverSet
from raygrain.actors import Actor, InvalidCallError
from raygrain.runtime import Cluster
from tests.helpers import wait_until


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Room(Actor[None], name="test.observers.Room"):
    def __init__(self) -> None:
        self.observers = ObserverSet(expiry=30)
        self.own: list[str] = []

    async def join(self, observer: ObserverRef) -> int:
        self.observers.subscribe(observer)
        return len(self.observers)

    async def say(self, text: str) -> int:
        return self.observers.notify("message", self.context.key, text)

    async def listen_to(self, other: str) -> None:
        # An actor observing another: its own object, pushed to like a client's.
        class Ear:
            def __init__(self, heard: list[str]) -> None:
                self.heard = heard

            def message(self, room: str, text: str) -> None:
                self.heard.append(f"{room}: {text}")

        await self.actors.get(Room, other).join(self.streams.observer(Ear(self.own)))

    async def heard(self) -> list[str]:
        return self.own


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, str]] = []

    def message(self, room: str, text: str) -> None:
        self.messages.append((room, text))


async def test_a_client_observer_gets_pushes_in_order() -> None:
    async with Cluster.local(actors=[Room], silos=2) as cluster:
        inbox = Inbox()
        ref = cluster.streams.observer(inbox)
        room = cluster.get(Room, "lobby")
        assert await room.join(ref) == 1
        for n in range(20):
            assert await room.say(f"m{n}") == 1
        await wait_until(lambda: len(inbox.messages) == 20, "20 notifications")
        assert inbox.messages == [("lobby", f"m{n}") for n in range(20)]
        # A vanished observer (deleted here, like a client gone): the actor notices nothing.
        assert cluster.streams.delete_observer(ref) is True
        assert await room.say("into the void") == 1
        assert inbox.messages[-1] == ("lobby", "m19")


async def test_an_actor_observes_another_actor() -> None:
    async with Cluster.local(actors=[Room], silos=2) as cluster:
        await cluster.get(Room, "ear").listen_to("stage")
        await cluster.get(Room, "stage").say("hello")
        listener = cluster.get(Room, "ear")

        async def heard() -> bool:
            return await listener.heard() == ["stage: hello"]

        await wait_until(heard, "the listening actor to hear the stage")


def test_observers_not_renewed_are_dropped_with_a_log_line(caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="raygrain.streams")
    clock = FakeClock()
    observers = ObserverSet(expiry=10, clock=clock)
    stale, fresh = ObserverRef("client-a", "1"), ObserverRef("client-b", "2")
    observers.subscribe(stale)
    observers.subscribe(fresh)
    clock.now = 8
    observers.subscribe(fresh)  # renewed
    clock.now = 12
    assert observers.drop_expired() == [stale]
    assert list(observers) == [fresh] and stale not in observers
    assert "observer 1 at client-a dropped: not renewed within 10 s" in caplog.text


def test_observer_misuse_is_refused_clearly() -> None:
    with pytest.raises(ConfigurationError, match="positive seconds"):
        ObserverSet(expiry=0)
    with pytest.raises(ConfigurationError, match="only an ObserverRef"):
        ObserverSet().subscribe("client-a")  # type: ignore[arg-type]
    with pytest.raises(InvalidCallError, match="from inside an actor's turn"):
        ObserverRef("client-a", "1").message("hi")
    observers = ObserverSet()
    observers.subscribe(ObserverRef("client-a", "1"))
    for method in ("_private", "", 3):
        with pytest.raises(InvalidCallError, match="names a public method"):
            observers.notify(method)  # type: ignore[arg-type]
