"""``BaseException``s that are no ``Exception`` from an actor's code: each is that call's (or
activation's) failure, answered at once with its state change rolled back, and the silo serves
on. (``tests/runtime/test_bad_input.py`` has ``SystemExit`` and a library's own; here the
``GeneratorExit`` that the kernel took for its coroutine being closed.)"""

from __future__ import annotations

import asyncio
import dataclasses
import types
from collections.abc import Generator
from typing import Any

import pytest

from raygrain.actors import Actor, RemoteActorError, SerializationError, StateDecodeError
from raygrain.runtime import Cluster
from raygrain.runtime.kernel._turns import is_closing

_FAILED_ACTIVATING: list[bool] = []


class _ExitsGenerator(Actor[int], name="test.ExitsGenerator"):
    async def on_activate(self) -> None:
        if self.context.key == "fails-activating" and not _FAILED_ACTIVATING:
            _FAILED_ACTIVATING.append(True)
            raise GeneratorExit("on_activate gave up")

    async def add_then_exit(self, wait_first: bool) -> None:
        self.state += 1
        if wait_first:
            await asyncio.sleep(0)  # (the rest of the turn runs on a runner task)
        raise GeneratorExit("gave up")

    async def count(self) -> int:
        return self.state


@pytest.mark.parametrize("wait_first", [False, True], ids=["at-once", "after-a-wait"])
@pytest.mark.parametrize("active", [False, True], ids=["activating", "active"])
async def test_generator_exit_from_a_method_is_that_calls_failure(
    active: bool, wait_first: bool
) -> None:
    """A method raising ``GeneratorExit`` was taken for its turn being closed and let through:
    the caller got no answer (it waited out its deadline, or had the exception raised in its
    own task) and the state change stayed in memory."""
    async with Cluster.local(actors=[_ExitsGenerator], default_timeout=60) as local:
        actor = local.get(_ExitsGenerator, "g")
        if active:
            assert await actor.count() == 0
        with pytest.raises(RemoteActorError, match=r"builtins\.GeneratorExit") as raised:
            await asyncio.wait_for(actor.add_then_exit(wait_first), 30)
        assert "test.ExitsGenerator/g.add_then_exit" in str(raised.value)  # actor, method
        assert "raised GeneratorExit('gave up',)" in str(raised.value)
        assert await actor.count() == 0  # rolled back
        await actor.count()  # and serving: the second call after the failure, eagerly too
        assert await local.get(_ExitsGenerator, "other").count() == 0


async def test_generator_exit_from_on_activate_is_that_activations_failure() -> None:
    _FAILED_ACTIVATING.clear()
    async with Cluster.local(actors=[_ExitsGenerator], default_timeout=60) as local:
        actor = local.get(_ExitsGenerator, "fails-activating")
        with pytest.raises(RemoteActorError, match=r"on_activate raised GeneratorExit"):
            await asyncio.wait_for(actor.count(), 30)
        assert await actor.count() == 0  # activated again


@types.coroutine
def _suspend() -> Generator[None, None, None]:
    yield


async def _awaits(inner: Any, seen: list[bool]) -> None:
    try:
        await inner()
    except GeneratorExit as exc:
        seen.append(is_closing(exc))
        raise


async def _raises() -> None:
    raise GeneratorExit


async def _suspends() -> None:
    await _suspend()


def test_is_closing_tells_a_close_from_a_raise() -> None:
    """A turn being closed must let its GeneratorExit go on without awaiting anything; one
    raised by the method is the call's failure."""
    seen: list[bool] = []
    closed = _awaits(_suspends, seen)
    closed.send(None)
    closed.close()
    raised = _awaits(_raises, seen)
    with pytest.raises(GeneratorExit):
        raised.send(None)
    assert seen == [True, False]


class _Aborted(BaseException):
    """Not an ``Exception`` (as pytest's ``Failed``, or a library's own cancellation)."""


@dataclasses.dataclass
class _Picky:
    value: int

    def __post_init__(self) -> None:
        if self.value < 0:
            raise _Aborted("negative")  # (runs where the value is decoded: on the silo)


class _TakesPicky(Actor[int], name="test.TakesPicky"):
    async def take(self, picky: _Picky) -> int:
        self.state += picky.value
        return self.state


@pytest.mark.parametrize("raised", [_Aborted, SystemExit], ids=["base-exception", "exit"])
async def test_a_base_exception_decoding_arguments_fails_that_call(
    raised: type[BaseException], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An argument whose type's ``__post_init__`` raised a ``BaseException`` that is no
    ``Exception`` while the silo decoded it escaped the silo's delivery."""
    if raised is SystemExit:
        monkeypatch.setattr(_Picky, "__post_init__", _exits)
    async with Cluster.local(actors=[_TakesPicky], default_timeout=60) as local:
        actor = local.get(_TakesPicky, "p")
        picky = _Picky(1)
        picky.value = -1  # (built here, refused where it is built again: on the silo)
        with pytest.raises(SerializationError, match="arguments of test.TakesPicky.take"):
            await asyncio.wait_for(actor.take(picky), 30)
        assert await actor.take(_Picky(0)) == 0  # serving


def _exits(self: _Picky) -> None:
    if self.value < 0:
        raise SystemExit(3)


@dataclasses.dataclass
class _PickyState:
    value: int = 0

    def __post_init__(self) -> None:
        if self.value < 0:
            raise _Aborted("negative")  # (runs where the state is decoded: on activation)


class _KeepsPicky(Actor[_PickyState], name="test.KeepsPicky"):
    async def set(self, value: int) -> int:
        self.state.value = value  # (no __post_init__ here: it runs when the state is read)
        self.context.deactivate_on_idle()
        return value

    async def get(self) -> int:
        return self.state.value


@pytest.mark.parametrize("raised", [_Aborted, SystemExit], ids=["base-exception", "exit"])
async def test_a_base_exception_decoding_a_stored_state_fails_the_activation(
    raised: type[BaseException], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stored state whose type's ``__post_init__`` raises a ``BaseException`` that is no
    ``Exception`` fails the activation as an undecodable state does (``StateDecodeError``
    naming the actor and the state type); it was reported as ``on_activate`` raising it."""
    if raised is SystemExit:
        monkeypatch.setattr(_PickyState, "__post_init__", _state_exits)
    async with Cluster.local(actors=[_KeepsPicky], default_timeout=60) as local:
        picky = local.get(_KeepsPicky, "p")
        assert await picky.set(-1) == -1  # stored, then the activation goes
        with pytest.raises(StateDecodeError, match="KeepsPicky"):
            await asyncio.wait_for(picky.get(), 30)
        assert await local.get(_KeepsPicky, "q").set(2) == 2  # serving


def _state_exits(self: _PickyState) -> None:
    if self.value < 0:
        raise SystemExit(3)
