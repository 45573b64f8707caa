"""Turn runners: the tasks that run an activation's turns, and eager starts.

Creating an asyncio task costs more than a whole in-process call, so a silo keeps runner tasks
that wait for their next turn instead of ending. A turn may also start eagerly, in its caller's
stack, until it first has to wait (see ``TurnRunners.run``). Every turn starts in a clean
context: the runtime's variables and the capabilities' (``turn_variable``), nothing else.
"""

from __future__ import annotations

import asyncio
import contextvars
import decimal
import threading
from asyncio.tasks import _current_tasks, _enter_task, _leave_task  # type: ignore[attr-defined]
from collections.abc import Coroutine, Generator
from typing import TYPE_CHECKING, Any, TypeAlias

from raygrain.actors import current_invoker
from raygrain.runtime.kernel._caller import CallChain, current_chain
from raygrain.runtime.kernel._extensions import TURN_VARIABLES
from raygrain.runtime.kernel._logging import get_logger

if TYPE_CHECKING:
    from raygrain.runtime.kernel._silo import Silo

__all__ = ["TurnRunners", "fresh_context"]

_MAX_IDLE_RUNNERS = 4096
_NO_CHAIN = CallChain(())  # a runner's turns set their own
# Turns started eagerly inside other eager turns (A calls B calls C ...), at most; deeper ones
# go to a runner task, so that a long call chain cannot exhaust the Python stack.
_MAX_EAGER_DEPTH = 8


class _EagerDepth(threading.local):
    value = 0


_eager = _EagerDepth()


class _Resumed:
    """The rest of a turn that started eagerly and then had to wait: an awaitable a runner task
    drives, each step inside the turn's own context (as if it had been a task from the start)."""

    __slots__ = ("_pending", "_turn", "context", "throw_first")

    def __init__(
        self, turn: Coroutine[Any, Any, None], pending: Any, context: contextvars.Context
    ) -> None:
        self._turn = turn
        self._pending = pending
        self.context = context
        self.throw_first: BaseException | None = None

    def __await__(self) -> Generator[Any, Any, None]:
        turn, run, pending = self._turn, self.context.run, self._pending
        if self.throw_first is not None:
            try:
                pending = run(turn.throw, self.throw_first)
            except StopIteration:
                return
        while True:
            try:
                sent = yield pending
            except GeneratorExit:
                turn.close()
                raise
            except BaseException as exc:  # a cancellation: the turn decides what it means
                try:
                    pending = run(turn.throw, exc)
                except StopIteration:
                    return
            else:
                try:
                    pending = run(turn.send, sent)
                except StopIteration:
                    return


# What a runner task is handed: a turn not started yet, or the rest of one started eagerly.
_Turn: TypeAlias = "Coroutine[Any, Any, None] | _Resumed"


# Every turn runs in a context that holds the runtime's own variables and nothing else when the
# turn starts (see TurnRunners.run): a runner task's context, or one an eager turn takes.


def _fresh_context() -> contextvars.Context:
    context = contextvars.Context()
    context.run(_set_runtime_variables)
    return context


def _set_runtime_variables() -> None:
    current_chain.set(_NO_CHAIN)
    current_invoker.set(None)
    for variable, default in TURN_VARIABLES:  # the capabilities' own (see turn_variable)
        variable.set(default)
    # The decimal module keeps its context in a context variable that it creates on first use:
    # set it up front, or every turn doing Decimal arithmetic would leave a context unclean.
    decimal.setcontext(decimal.Context())


def _is_clean(context: contextvars.Context) -> bool:
    """Whether ``context`` holds no more than _set_runtime_variables sets (the kernel's two,
    the capabilities' and decimal's)."""
    return len(context) == 3 + len(TURN_VARIABLES)


def fresh_context() -> contextvars.Context:
    return _fresh_context()


class TurnRunners:
    """The runner tasks of one silo, idle ones kept for the next turn."""

    def __init__(self, silo: Silo) -> None:
        self._silo = silo
        self._idle_runners: list[tuple[asyncio.Task[None], asyncio.Future[_Turn]]] = []
        self._contexts: list[contextvars.Context] = []  # clean ones, for eager turns

    def clear(self) -> None:
        self._idle_runners.clear()

    def run(self, turn: Coroutine[Any, Any, None], eager: bool = False) -> bool | None:
        """Run a turn on a runner task: an idle one, or a new one.

        Creating an asyncio task costs more than a whole in-process call (the task registry is
        a WeakSet in Python code), so finished runners wait for the next turn instead of ending.
        An ``eager`` turn starts on the spot, in the caller's stack but as its runner's task
        (``asyncio.current_task()``, timeouts and cancellation all belong to the runner),
        until it first has to wait; most in-process turns never do, so they answer before
        ``deliver_request`` returns, saving a trip through the event loop. The runner drives
        the rest. Each turn sets the runtime's context variables when it starts.

        Context variables set in a turn are seen by no other turn, and none flow in from the
        caller (they could not cross processes either): a turn runs in a clean context, a
        runner's own or (eager) one kept from an earlier turn that left it clean, and a runner
        whose turn set variables of its own retires (see ``_runner``).
        Returns whether the turn is over (it started eagerly and never had to wait), or None
        when it could not start eagerly (no idle runner, or nested too deep).
        """
        idle = None
        idle_runners = self._idle_runners
        # An idle runner and the future it waits on for its next turn. A runner whose turn
        # cancelled it (asyncio.current_task().cancel()) wakes up cancelled and ends: its
        # future is cancelled, and it is passed over here.
        while idle_runners:
            candidate = idle_runners.pop()
            if not candidate[1].done():
                idle = candidate
                break
        if not eager or idle is None or _eager.value >= _MAX_EAGER_DEPTH:
            # (An eager start needs a runner that is already running: one not started yet
            # would die of a cancellation the turn asks for before the runner first runs.)
            waiter = idle[1] if idle is not None else self._new_runner()
            waiter.set_result(turn)
            return None if eager else False
        runner, waiter = idle
        loop = waiter.get_loop()
        contexts = self._contexts
        context = contexts.pop() if contexts else _fresh_context()
        caller = _current_tasks.get(loop)  # (asyncio.current_task(loop), one call less)
        if caller is not None:
            _leave_task(loop, caller)
        _enter_task(loop, runner)
        _eager.value += 1
        try:
            pending = context.run(turn.send, None)
        except StopIteration:
            idle_runners.append(idle)
            # (_recycle, inlined: this runs once per turn)
            if len(context) == 3 + len(TURN_VARIABLES) and len(contexts) < _MAX_IDLE_RUNNERS:
                contexts.append(context)
            return True
        except Exception as exc:  # a turn reports its own errors; this is a runtime bug
            get_logger().error("turn_crashed", silo=self._silo.name, error=repr(exc))
            self._idle_runners.append((runner, waiter))
            return True
        finally:
            _eager.value -= 1
            _leave_task(loop, runner)
            if caller is not None:
                _enter_task(loop, caller)
        waiter.set_result(_Resumed(turn, pending, context))
        return False

    def _recycle(self, context: contextvars.Context) -> None:
        """Keep an eager turn's context for a later one if the turn left it clean (a fresh
        context per turn costs an allocation, three variable sets and garbage collection)."""
        # (_is_clean, inlined: this runs once per turn)
        if len(context) == 3 + len(TURN_VARIABLES) and len(self._contexts) < _MAX_IDLE_RUNNERS:
            self._contexts.append(context)

    def _new_runner(self) -> asyncio.Future[_Turn]:
        waiter: asyncio.Future[_Turn] = asyncio.get_running_loop().create_future()
        # The task's context is a copy of a clean one, not of its creator's: nothing flows
        # from the creator into the runner's turns.
        self._silo.spawn_clean(self._runner(waiter))
        return waiter

    async def _runner(self, waiter: asyncio.Future[_Turn]) -> None:
        """Run the turns handed over by ``waiter`` until the silo closes, enough runners idle,
        or a turn leaves the task's context unclean (then this runner ends, and the variables
        the turn set end with it)."""
        me = asyncio.current_task()
        assert me is not None
        while True:
            try:
                turn = await waiter
            except asyncio.CancelledError as exc:
                if not waiter.done() or waiter.cancelled():
                    raise  # cancelled while idle: the silo is closing
                # Cancelled after being handed a turn (one that set a very short timeout while
                # it started eagerly): the cancellation is the turn's.
                turn = waiter.result()
                if isinstance(turn, _Resumed):
                    turn.throw_first = exc
            try:
                await turn
            except Exception as exc:  # a turn reports its own errors; this is a runtime bug
                get_logger().error("turn_crashed", silo=self._silo.name, error=repr(exc))
            else:
                if isinstance(turn, _Resumed):  # an eager turn's own context
                    self._recycle(turn.context)
            if (
                self._silo.closed
                or len(self._idle_runners) >= _MAX_IDLE_RUNNERS
                or not _is_clean(contextvars.copy_context())
            ):
                return
            waiter = me.get_loop().create_future()
            self._idle_runners.append((me, waiter))
