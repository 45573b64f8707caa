"""Actor classes the runtime could not run as written, and lifecycle hooks that misbehave: each
is refused when the class is defined, or fails its own call, and never wedges an actor, the
silo's idle collection or a shutdown. (Found by trying them; each failed before.)"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest

from raygrain.actors import (
    Actor,
    ClusterClosedError,
    ConfigurationError,
    DeactivationReason,
    Persistence,
    TurnCancelledError,
    actor_options,
    one_way,
    read_only,
)
from raygrain.runtime import Cluster
from tests.helpers import bounded, still_pending, wait_until

T = TypeVar("T")

# -- refused with the class ------------------------------------------------------------------


def test_hooks_the_runtime_could_not_call_are_refused_with_the_class() -> None:
    with pytest.raises(ConfigurationError, match="on_activate must be async def on_activate"):

        class SyncActivate(Actor[int], name="life.SyncActivate"):
            def on_activate(self) -> None:  # type: ignore[override]
                pass

    with pytest.raises(ConfigurationError, match=r"on_deactivate\(self, reason\)"):

        class NoReason(Actor[int], name="life.NoReason"):
            async def on_deactivate(self) -> None:  # type: ignore[override]
                pass

    with pytest.raises(ConfigurationError, match=r"on_reminder\(self, name, tick\)"):

        class OneArgument(Actor[int], name="life.OneArgument"):
            async def on_reminder(self, name: str) -> None:  # type: ignore[override]
                pass

    with pytest.raises(ConfigurationError, match="__init__ is called with no arguments"):

        class NeedsArguments(Actor[int], name="life.NeedsArguments"):
            def __init__(self, size: int) -> None:
                self.size = size

    class Fine(Actor[int], name="life.Fine"):  # optional parameters and *args are fine
        def __init__(self, size: int = 3) -> None:
            self.size = size

        async def on_deactivate(self, reason: DeactivationReason, *rest: Any) -> None:
            pass


def test_a_method_option_on_a_plain_def_is_refused_with_the_class() -> None:
    # (It was refused only when first called, as no method of that name.)
    with pytest.raises(ConfigurationError, match="Plain.total has a method option"):

        class Plain(Actor[int], name="life.Plain"):
            @read_only
            def total(self) -> int:
                return self.state

    with pytest.raises(ConfigurationError, match="Static.ping has a method option"):

        class Static(Actor[int], name="life.Static"):
            @staticmethod
            @one_way
            def ping() -> None:
                pass

    class Helpers(Actor[int], name="life.Helpers"):  # undecorated plain helpers are fine
        def total(self) -> int:
            return self.state

        @read_only
        async def read(self) -> int:
            return self.total()


def test_a_stateless_worker_declaring_state_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="a stateless worker keeps no state"):

        class Counter(Actor[int], name="life.Counter", stateless_worker=True):
            async def inc(self) -> int:
                self.state += 1
                return self.state


def test_class_options_are_inherited_but_not_the_name() -> None:
    class Base(
        Actor[None],
        name="life.Base",
        persistence="explicit",
        idle_timeout=5,
        stateless_worker=True,
        max_local_workers=8,
        reentrant=True,
    ):
        pass

    class Sub(Base):
        pass

    class NotReentrant(Base, reentrant=False):
        pass

    options = actor_options(Sub)
    assert options.name != "life.Base"
    assert options.persistence is Persistence.EXPLICIT and options.idle_timeout == 5
    assert options.stateless_worker and options.max_local_workers == 8 and options.reentrant
    assert not actor_options(NotReentrant).reentrant


@dataclass
class Basket:
    items: list[str] = field(default_factory=list)


class Repository(Actor[T], Generic[T]):
    """A generic actor class: its subclasses name the state type."""

    async def snapshot(self) -> Any:
        return self.state


class Baskets(Repository[Basket], name="life.Baskets"):
    async def add(self, item: str) -> list[str]:
        self.state.items.append(item)
        return self.state.items


async def test_a_generic_actor_class_passes_its_state_type_on(tmp_path: Any) -> None:
    assert Baskets.__actor_state_type__ is Basket
    store = f"sqlite:///{tmp_path / 'baskets.db'}"
    async with Cluster.local(actors=[Baskets], storage=store) as cluster:
        assert await cluster.get(Baskets, "b").add("tea") == ["tea"]
    async with Cluster.local(actors=[Baskets], storage=store) as cluster:
        assert await cluster.get(Baskets, "b").snapshot() == Basket(["tea"])


class StillGeneric(Repository[T], Generic[T], name="life.StillGeneric"):
    async def put(self, value: Any) -> Any:
        self.state = value
        return self.state


class UnnamedSubclass(Repository, name="life.UnnamedSubclass"):  # type: ignore[type-arg]
    pass


@pytest.mark.parametrize(
    "cls", [Repository, StillGeneric, UnnamedSubclass], ids=lambda c: c.__name__
)
def test_a_generic_actor_class_that_names_no_state_type_is_refused(cls: type[Any]) -> None:
    """Registered as it is, a generic actor class kept no state at all: every call that set
    ``self.state`` answered, and the next activation had None (Orleans' generic grains are
    always called with their type arguments)."""
    with pytest.raises(ConfigurationError, match="state type is the type variable ~T"):
        Cluster.local(actors=[cls])


class GenericWorker(Actor[T], Generic[T], name="life.GenericWorker", stateless_worker=True):
    async def echo(self, value: int) -> int:
        return value


async def test_a_generic_stateless_worker_is_still_registered() -> None:
    # 81385ce refused every generic actor class registered as it is, since its state would
    # never be stored; a stateless worker keeps none anyway, and was refused with the rest.
    async with Cluster.local(actors=[GenericWorker]) as cluster:
        assert await cluster.get(GenericWorker, "w").echo(3) == 3


def test_a_storage_that_is_neither_a_url_nor_a_provider_is_refused() -> None:
    for storage in (None, 5):
        with pytest.raises(ConfigurationError, match="storage must be a URL"):
            Cluster.local(actors=[Baskets], storage=storage)  # type: ignore[arg-type]


# -- hooks that misbehave at run time --------------------------------------------------------

ACTIVATIONS: dict[str, int] = {}


class CancelledOnce(Actor[int], name="life.CancelledOnce"):
    async def on_activate(self) -> None:
        key = str(self.context.key)
        ACTIVATIONS[key] = ACTIVATIONS.get(key, 0) + 1
        if ACTIVATIONS[key] == 1:
            waiting = asyncio.ensure_future(asyncio.sleep(10))
            waiting.cancel()
            await waiting  # raises CancelledError out of on_activate

    async def ping(self) -> int:
        return ACTIVATIONS[str(self.context.key)]


async def test_an_on_activate_raising_cancelled_error_fails_the_call_and_is_tried_again() -> None:
    ACTIVATIONS.clear()
    async with Cluster.local(actors=[CancelledOnce]) as cluster:
        actor = cluster.get(CancelledOnce, "c").with_timeout(10)
        with pytest.raises(TurnCancelledError, match="on_activate was cancelled"):
            await actor.ping()
        assert await actor.ping() == 2  # activated again (it used to hang every call after)


class NeverActive(Actor[int], name="life.NeverActive"):
    async def on_activate(self) -> None:
        await asyncio.sleep(3600)

    async def ping(self) -> int:
        return 1


async def test_an_on_activate_that_never_returns_does_not_hold_a_shutdown() -> None:
    async def run_and_leave() -> None:
        async with Cluster.local(actors=[NeverActive], deactivation_timeout=0.2) as cluster:
            with pytest.raises(TimeoutError):
                await cluster.get(NeverActive, "n").with_timeout(0.3).ping()

    await bounded(run_and_leave(), "the cluster to leave", 30.0)


class LosesItsHook(Actor[int], name="life.LosesItsHook"):
    """Its instance's on_deactivate becomes something the runtime cannot await."""

    async def on_deactivate(self, reason: DeactivationReason) -> None:
        pass

    async def break_hook_and_leave(self) -> None:
        self.on_deactivate = lambda reason: None  # type: ignore[method-assign]
        self.context.deactivate_on_idle()

    async def ping(self) -> str:
        return "pong"


async def test_a_deactivation_whose_hook_cannot_run_still_completes() -> None:
    # Before, the deactivation stopped half way: the actor stayed unreachable (every call
    # timed out), idle collection waited for it for ever, and the shutdown hung.
    async def run_and_leave() -> None:
        async with Cluster.local(actors=[LosesItsHook], deactivation_timeout=0.5) as cluster:
            actor = cluster.get(LosesItsHook, "l").with_timeout(10)
            await actor.break_hook_and_leave()
            assert await actor.ping() == "pong"  # a fresh activation serves it
            assert await cluster.collect_idle() >= 0

    await bounded(run_and_leave(), "the cluster to leave", 30.0)


class Fire(Actor[None], name="life.Fire"):
    @one_way
    async def fire(self) -> None:
        raise ValueError("lost order #42")


async def test_a_failed_one_way_call_is_logged_as_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="raygrain")
    async with Cluster.local(actors=[Fire]) as cluster:
        assert await cluster.get(Fire, "f").fire() is None

        async def logged() -> None:
            while "one_way_call_failed" not in caplog.text:
                await asyncio.sleep(0.01)

        await bounded(logged(), "the failure to be logged", 10.0)
    assert "lost order #42" in caplog.text


# -- closing a cluster with calls in flight -------------------------------------------------------


class Slow(Actor[list[str]], name="test.lifecycle.Slow"):
    async def note_after(self, gate_name: str, tag: str) -> str:
        await _gate(gate_name).wait()
        self.state.append(tag)
        return tag

    async def notes(self) -> list[str]:
        return list(self.state)


_GATES: dict[str, asyncio.Event] = {}


def _gate(name: str) -> asyncio.Event:
    return _GATES.setdefault(name, asyncio.Event())


async def test_closing_a_local_cluster_lets_running_turns_answer_and_refuses_new_calls(
    tmp_path: Path,
) -> None:
    # A call whose turn runs as the cluster closes gets that turn's answer (the turn finishes
    # first, and its write with it): failed with ClusterClosedError, the caller could not
    # tell a write that happened from one that did not. A call made after the close began
    # is refused.
    _GATES.clear()
    store = f"sqlite:///{tmp_path / 'state.db'}"
    cluster = Cluster.local(actors=[Slow], storage=store)
    await cluster.start()
    slow = cluster.get(Slow, "a")
    running = asyncio.ensure_future(slow.note_after("close", "kept"))
    await wait_until(lambda: "close" in _GATES, "the turn to start")
    closing = asyncio.ensure_future(cluster.aclose())
    await asyncio.sleep(0)
    with pytest.raises(ClusterClosedError):
        await slow.notes()
    _gate("close").set()
    assert await bounded(running, "the running call") == "kept"
    await bounded(closing, "the close")
    async with Cluster.local(actors=[Slow], storage=store) as again:
        assert await again.get(Slow, "a").notes() == ["kept"]


async def test_a_close_cut_short_by_its_caller_goes_on_and_a_second_close_waits_for_it() -> None:
    _GATES.clear()
    cluster = Cluster.local(actors=[Slow])
    await cluster.start()
    slow = cluster.get(Slow, "b")
    running = asyncio.ensure_future(slow.note_after("cut", "late"))
    await wait_until(lambda: "cut" in _GATES, "the turn to start")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(cluster.aclose(), 0.05)  # the turn holds the close up
    second = asyncio.ensure_future(cluster.aclose())
    assert await still_pending(second), "the second close returned while the first went on"
    _gate("cut").set()
    await bounded(second, "the second close")
    assert await bounded(running, "the running call") == "late"
    assert all(silo.closed for silo in cluster.silos)
