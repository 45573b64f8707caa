"""One activation: an actor instance in memory, from activation to deactivation.

An activation is three layers, each a class a reader can hold in their head: ``Mailbox`` (which
delivered call may start when), ``TurnRunner`` (running a turn, committing or rolling back its
state, replying) and this one: the lifecycle (load the state, build the instance, run
``on_activate``; later finish the running turns, run ``on_deactivate``, re-route what queued)
and the ``ActorRuntime`` its instance talks to. The state itself lives in a ``StateSlot``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from raygrain.actors import (
    Actor,
    ActorId,
    ActorKey,
    ActorRef,
    ConfigurationError,
    DeactivationReason,
    InvalidCallError,
    TurnCancelledError,
)
from raygrain.runtime.kernel._internal import InternalTurn
from raygrain.runtime.kernel._logging import get_logger
from raygrain.runtime.kernel._mailbox import ActivationState, Delivery
from raygrain.runtime.kernel._turns import TurnRunner, exit_error, is_closing

if TYPE_CHECKING:
    from raygrain.runtime.kernel._extensions import TurnEnding
    from raygrain.runtime.kernel._silo import Silo

__all__ = ["Activation", "ActivationState", "Delivery"]


class Activation(TurnRunner):
    __slots__ = ("_activating", "_deactivated", "extras")

    def __init__(self, silo: Silo, actor_id: ActorId, cls: type[Actor[Any]]) -> None:
        super().__init__(silo, actor_id, cls)
        # Per-activation state of the capabilities (timers, ...), by their own keys; created
        # on first use, since most activations never need it.
        self.extras: dict[str, Any] | None = None
        self._deactivated: asyncio.Future[None] | None = None
        self._activating: asyncio.Future[None] | None = None

    def start(self) -> None:
        """Begin activating in the background; calls queue in the mailbox meanwhile."""
        self._activating = self.silo.spawn_clean(self.activate())

    # -- lifecycle ---------------------------------------------------------------------------

    async def activate(self) -> None:
        """Load the state, build the instance, run ``on_activate``, then start the mailbox."""
        chain = self._enter_turn(())
        try:
            if not self.options.stateless_worker:
                while (gate := self.silo.activation_gate) is not None and not gate.done():
                    await asyncio.shield(gate)
            state = await self.slot.load() if self.slot is not None else None
            instance = self.cls.__new__(self.cls)
            instance._context = self
            instance.state = state
            instance.__init__()  # type: ignore[misc]  # user __init__ takes no arguments
            self.instance = instance
            await instance.on_activate()
        except KeyboardInterrupt:
            raise  # a Ctrl-C goes on
        except BaseException as exc:
            # (Any BaseException but those: a library's own, pytest's Failed, is the
            # activation's failure too, sent to the calls waiting for it.)
            if isinstance(exc, GeneratorExit) and is_closing(exc):
                raise  # this coroutine is being closed: nothing may be awaited
            if isinstance(exc, (SystemExit, GeneratorExit)):  # (its failure, not the exit)
                exc = exit_error(exc, f"{self.actor_id}.on_activate")
            elif isinstance(exc, asyncio.CancelledError):
                cancelling = getattr(asyncio.current_task(), "cancelling", None)  # (3.11+)
                if cancelling is not None and cancelling():
                    raise  # this activation is cancelled (its silo closing, or a deadline)
                # on_activate raised CancelledError (or cancelled a task it awaited): that is
                # its failure, as for a method (the actor activates again on its next call).
                exc = TurnCancelledError(
                    f"{self.actor_id}: on_activate was cancelled (it raised "
                    "asyncio.CancelledError) before returning"
                )
            get_logger().warning("activation_failed", actor=str(self.actor_id), error=repr(exc))
            self.state = ActivationState.INVALID
            self.silo.forget(self)
            failed, self.mailbox = self.mailbox or (), None
            for delivery in failed:
                if isinstance(delivery.ticket, InternalTurn):
                    delivery.ticket.dropped()
                else:
                    self.silo.reply_error(delivery.request, exc, self._where(delivery.method))
            return
        finally:
            chain.open = False  # (a task on_activate left running calls on its own)
        get_logger().debug("activated", actor=str(self.actor_id), silo=self.silo.name)
        self._activating = None  # the finished task and its context are no longer needed
        self.state = ActivationState.VALID
        for hook in self.silo.on_activated:
            hook(self)
        # The queued calls in arrival order, as they would have started on an active actor;
        # then the interleaving ones still queued behind a turn (they never wait behind one).
        self.pump()
        self._start_interleaving()

    async def deactivate(self, reason: DeactivationReason) -> None:
        """Finish running turns, run ``on_deactivate``, drop the activation and re-route any
        queued calls (they activate the actor afresh, wherever the ring now places it)."""
        await asyncio.shield(self.begin_deactivation(reason))

    def begin_deactivation(self, reason: DeactivationReason) -> asyncio.Future[None]:
        """Stop starting turns now (calls from here on queue for re-routing) and finish the
        deactivation in the background; returns a future that completes with it."""
        if self._deactivated is None:
            self._deactivated = asyncio.get_running_loop().create_future()
            if self.state is ActivationState.VALID:
                self.state = ActivationState.DEACTIVATING
            for hook in self.silo.on_deactivation_begun:
                hook(self, reason)
            self.silo.spawn_clean(self._finish_deactivation(reason, self._deactivated))
        return self._deactivated

    async def _finish_deactivation(
        self, reason: DeactivationReason, done: asyncio.Future[None]
    ) -> None:
        try:
            activating = self._activating
            if activating is not None and not activating.done():
                # Let the activation finish first so on_deactivate always follows on_activate;
                # bounded as on_deactivate is: an on_activate that never returns is cancelled.
                timeout = self.silo.options.deactivation_timeout
                finished, _ = await asyncio.wait({activating}, timeout=timeout)
                if not finished:
                    activating.cancel()
                    get_logger().warning(
                        "on_activate_timeout", actor=str(self.actor_id), timeout=timeout
                    )
                    self.state = ActivationState.INVALID
                if self.state is ActivationState.VALID:
                    self.state = ActivationState.DEACTIVATING
            if self.state is ActivationState.DEACTIVATING:
                await self._wait_idle()
                for hook in self.silo.on_deactivating:
                    hook(self, reason)
                await self._run_on_deactivate(reason)
        finally:
            # (Whatever happened above, the activation is gone: the silo forgets it and its
            # calls go elsewhere, or an actor would stay unreachable and a shutdown wait.)
            self._forget_and_reroute(reason, done)

    def _forget_and_reroute(self, reason: DeactivationReason, done: asyncio.Future[None]) -> None:
        self.state = ActivationState.INVALID
        self.silo.forget(self)
        get_logger().debug("deactivated", actor=str(self.actor_id), reason=reason.value)
        # A capability's hold goes (uncommitted changes with it); the calls it set aside and
        # the queued ones are routed again.
        set_aside = self.guard.drain(self) if self.guard is not None else []
        self.guard = None
        queued = [*(self.mailbox or ()), *set_aside]
        self.mailbox = None
        for delivery in queued:
            if isinstance(delivery.ticket, InternalTurn):
                delivery.ticket.dropped()  # the runtime's own turn: its capability decides
            else:
                self.silo.deliver_request(delivery.request)
        if not done.done():
            done.set_result(None)

    async def _run_on_deactivate(self, reason: DeactivationReason) -> None:
        """Run the instance's ``on_deactivate``, bounded by the deactivation timeout: a hook
        that never returns must not keep the actor unreachable (calls queue meanwhile) or a
        shutdown waiting. Past the bound the hook is cancelled and left behind."""
        assert self.instance is not None
        if type(self.instance).on_deactivate is Actor.on_deactivate:
            return  # not overridden: nothing to run (and no task to make)
        chain = self._enter_turn(())
        try:
            hook = asyncio.ensure_future(  # (in this context)
                _exit_as_failure(self.instance.on_deactivate(reason), f"{self.actor_id}")
            )
        except Exception as exc:  # (not a coroutine: refused at class definition since)
            get_logger().warning("on_deactivate_failed", actor=str(self.actor_id), error=repr(exc))
            return
        try:
            done, _ = await asyncio.wait((hook,), timeout=self.silo.options.deactivation_timeout)
        except asyncio.CancelledError:
            hook.cancel()
            raise
        finally:
            chain.open = False
        if not done:
            hook.cancel()
            hook.add_done_callback(_retrieve)
            get_logger().warning(
                "on_deactivate_timeout",
                actor=str(self.actor_id),
                timeout=self.silo.options.deactivation_timeout,
            )
            return
        error = hook.exception() if not hook.cancelled() else asyncio.CancelledError()
        if error is not None:
            get_logger().warning(
                "on_deactivate_failed", actor=str(self.actor_id), error=repr(error)
            )

    def _turn_ended(self) -> None:
        if self._idle_waiter is not None and self.is_idle_of_turns():
            self._idle_waiter.set_result(None)
            self._idle_waiter = None
        if self.deactivate_requested and self._deactivated is None:
            self.begin_deactivation(DeactivationReason.REQUESTED)

    async def _wait_idle(self) -> None:
        if self.is_idle_of_turns():
            return
        self._idle_waiter = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(
                asyncio.shield(self._idle_waiter), self.silo.options.deactivation_timeout
            )
        except asyncio.TimeoutError:
            # A turn that never ends must not hold a shutdown or handover hostage.
            get_logger().warning(
                "deactivation_timeout", actor=str(self.actor_id), silo=self.silo.name
            )

    # -- ActorRuntime ------------------------------------------------------------------------

    def ref(self, actor_type: type[Actor[Any]] | str, key: ActorKey) -> ActorRef:
        type_name = actor_type if isinstance(actor_type, str) else actor_type.__actor_options__.name
        return ActorRef(ActorId(type_name, key), self.silo.caller)

    def deactivate_on_idle(self) -> None:
        self.deactivate_requested = True
        if self.state is ActivationState.VALID and self.is_idle():
            # Asked from outside any turn (a task the actor left running): no turn will end
            # to act on it, so it takes effect now.
            self._turn_ended()

    def end_turn_with(self, ending: TurnEnding) -> None:
        """Finish the turn whose method is returning with ``ending`` (see ``TurnEnding``).
        Taken by the turn as soon as the method returns: a capability's wrapper of the method
        the runtime called hands it over as its last step, and nothing runs in between."""
        self.turn_ending = ending

    async def save(self) -> None:
        if self.guard is not None and self.guard.owns_changes:
            return  # e.g. a transaction holds the actor: it writes the changes when it commits
        if self.slot is not None and self.instance is not None:
            await self.slot.commit(self.instance.state)

    async def clear_state(self) -> None:
        if self.slot is None or self.instance is None:
            return
        if self.guard is not None and self.guard.owns_changes:
            raise InvalidCallError(
                f"{self.actor_id}: clear_state() inside a transaction; set the state to its "
                "empty value instead, and the transaction commits it"
            )
        self.instance.state = await self.slot.clear()

    def service(self, name: str) -> Any:
        """A capability's API for this activation (``actor.timers``, ``actor.reminders``)."""
        factory = self.silo.services.get(name)
        if factory is None:
            raise ConfigurationError(f"{self.actor_id}: this silo runs no {name!r} capability")
        return factory(self)


async def _exit_as_failure(hook: Coroutine[Any, Any, None], actor: str) -> None:
    """Run an ``on_deactivate`` hook; its ``SystemExit`` is its failure, as a method's is: on
    a task, asyncio would stop the silo's event loop with it."""
    try:
        await hook
    except SystemExit as exc:
        raise exit_error(exc, f"{actor}.on_deactivate") from None


def _retrieve(task: asyncio.Future[None]) -> None:
    # An abandoned on_deactivate: whatever it ends with was logged as a timeout already.
    if not task.cancelled():
        task.exception()
