"""The turn: run one call's method on the instance, commit its state, reply.

A changing turn commits the state before its reply is sent (acknowledged means durable), and
rolls the state back when the method raises (raised means no trace). With a provider that
queues writes (``storage.QueuedWrites``), a turn hands its write over and ends from the write's
callback, with no task left waiting. A capability governing the call (its ticket) takes part
through a ``TurnScope``: it may defer the commit to itself (a transaction) and act when the
method returned or raised. ``TurnRunner`` sits between ``Mailbox`` and ``Activation``.
"""

from __future__ import annotations

import asyncio
from time import monotonic
from typing import Any

from raygrain.actors import (
    Actor,
    ActorId,
    ActorMethod,
    DeactivationReason,
    InconsistentStateError,
    MessageTooLargeError,
    MethodOptions,
    Persistence,
    RemoteActorError,
    SerializationError,
    TurnCancelledError,
    TurnRolledBackError,
    current_invoker,
    encode,
    encode_error,
)
from raygrain.runtime.kernel._caller import CallChain, current_chain
from raygrain.runtime.kernel._extensions import (
    FLUSH_TIMINGS_AT,
    TURN_VARIABLES,
    TurnEnding,
)
from raygrain.runtime.kernel._logging import get_logger
from raygrain.runtime.kernel._mailbox import Delivery, Mailbox
from raygrain.runtime.kernel._state import StateSlot

__all__ = ["TurnRunner", "exit_error", "is_closing", "stand_in"]


class TurnRunner(Mailbox):
    __slots__ = (
        "_alone",
        "_idle_waiter",
        "_queued_turn",
        "deactivate_requested",
        "instance",
        "last_used",
        "slot",
        "turn_ending",
    )

    def __init__(self, silo: Any, actor_id: ActorId, cls: type[Actor[Any]]) -> None:
        super().__init__(silo, actor_id, cls)
        self.instance: Actor[Any] | None = None
        self.last_used = silo.clock.now()
        state_type = cls.__actor_state_type__
        # Only a stateful actor has a state slot (a stateless one has nothing to store).
        self.slot = None if state_type is None else StateSlot(actor_id, state_type, silo.storage)
        self._queued_turn: tuple[Delivery, bytes, float] | None = None  # _queue_write
        # Handed over by the method that just returned (end_turn_with), taken at once.
        self.turn_ending: TurnEnding | None = None
        # Read at every turn's end (see Activation._turn_ended): a waiter for the running
        # turns to end, and whether the actor asked to be deactivated once idle.
        self._idle_waiter: asyncio.Future[None] | None = None
        self.deactivate_requested = False
        self._alone = (actor_id,)  # the call chain of a turn called from outside any turn

    # Hooks of Activation: how a turn ends (called when someone waits for the turns to end or
    # the actor asked to be deactivated) and what a failure does to the activation.
    def _turn_ended(self) -> None:
        raise NotImplementedError

    def begin_deactivation(self, reason: DeactivationReason) -> Any:
        raise NotImplementedError

    def _start(self, delivery: Delivery, eager: bool = False) -> bool | None:
        return self.silo.runners.run(self._run_turn(delivery), eager)

    async def _run_turn(self, delivery: Delivery) -> None:
        request = delivery.request
        method = delivery.method
        options = method.options
        ticket = delivery.ticket
        scope = ticket.begin(self, delivery) if ticket is not None else None  # type: ignore[arg-type]
        slot = self.slot
        per_turn = (
            slot is not None
            and not options.read_only
            and (scope is None or not scope.defers_commit)
            and self.options.persistence is Persistence.PER_TURN
        )
        ends_when_written = False
        rollbacks = slot.rollbacks if slot is not None else 0
        observed = self.silo.on_turn_ended  # an extension observing turns: time them
        timings = delivery.timings
        if timings is None:  # (an internal turn: the silo did not route it)
            timings = delivery.timings = self.silo.turn_timings(
                self.actor_id.type_name, method.name
            )
        error: Exception | None = None
        turn_chain: CallChain | None = None
        try:
            # (Also the start of the turn's timing: asyncio's loop clock is time.monotonic.)
            started = self.silo.loop_time()
            if started > delivery.expires_at:
                observed = timings = ()
                return  # the caller has already timed out; running it now would be a surprise
            turn_chain = self._enter_turn(request.chain)
            for hook in self.silo.on_turn_started:
                hook(self, delivery)
            if scope is not None:
                scope.enter()
            try:
                result = await method.function(self.instance, *delivery.args, **delivery.kwargs)
                ending = self.turn_ending
                if ending is not None:
                    self.turn_ending = None
                    payload = self._encode_ending(method, result, ending)
                    if ending.deferrable and scope is None and not per_turn:
                        ends_when_written = self._end_later(delivery, payload, started, ending)
                        return
                    await ending.finish()
                else:
                    payload = self._encode_result(method, result)
                if per_turn:
                    assert slot is not None and self.instance is not None
                    # Encode only once no other write of this activation is under way: an
                    # interleaved turn that took the slot meanwhile may have written a newer
                    # state (with this turn's changes in it), which an older encoding would
                    # then overwrite.
                    while slot.writing:
                        await slot.write_finished()
                    if slot.rollbacks != rollbacks:
                        raise TurnRolledBackError(
                            f"{self._where(method)}: a turn interleaved with this one failed "
                            "and rolled the shared state back while this one ran, so this "
                            "turn's changes may or may not have been stored"
                        )
                    data = slot.changed(self.instance.state)
                    if data is not None:
                        # (A turn with a scope awaits its write: the scope hears how it went.)
                        if scope is None and self._queue_write(delivery, payload, data, started):
                            ends_when_written = True
                            return
                        await slot.write(data)
                if scope is not None:
                    await scope.succeeded()
                ok = True
            except Exception as exc:
                # (A turn that a rollback already hit does not roll back again: that would
                # only discard the changes of the turns that started after it.)
                rolls_back = per_turn and not isinstance(exc, TurnRolledBackError)
                ok, payload, error = False, self._fail_turn(method, exc, rolls_back), exc
                if scope is not None:
                    await scope.failed(exc)
            except asyncio.CancelledError:
                # The method raised CancelledError (or cancelled its own task). That is the
                # turn's failure, not the caller's: the caller gets a typed error at once,
                # and a turn started eagerly in the caller's stack must not cancel the caller.
                error = TurnCancelledError(
                    f"{self._where(method)} was cancelled (it raised asyncio.CancelledError) "
                    "before returning; its changes were rolled back"
                )
                ok, payload = False, self._fail_turn(method, error, per_turn)
                if scope is not None:
                    await scope.failed(error)
            except (SystemExit, GeneratorExit) as exc:
                # Raised by the method itself: that call's failure, never the silo's exit (a
                # turn on a task of the silo's would stop its event loop), nor, sent back as
                # it is, the caller's (it would end the caller's own coroutine). But a
                # GeneratorExit may be this turn being closed (its runner's loop ending): it
                # must go on, and nothing may be awaited.
                if isinstance(exc, GeneratorExit) and is_closing(exc):
                    raise
                error = exit_error(exc, self._where(method))
                ok, payload = False, self._fail_turn(method, error, per_turn)
                if scope is not None:
                    await scope.failed(error)
            except KeyboardInterrupt:
                raise  # a Ctrl-C goes on (as asyncio lets it: it stops the loop)
            except BaseException as exc:
                # A BaseException that is no Exception (a library's own, pytest's Failed): the
                # call's failure like any other, sent back as itself. (Let through, it reached
                # no caller, who waited out its deadline, and its changes were not undone.)
                error = stand_in(exc, self._where(method))
                ok, payload = False, self._fail_turn(method, error, per_turn, exc)
                if scope is not None:
                    await scope.failed(error)
            if not options.one_way:
                joined = scope.joined() if scope is not None else ()
                self.silo.reply(request, ok, payload, joined)
        finally:
            if turn_chain is not None:
                turn_chain.open = False  # (a task the turn left running calls on its own)
            if not ends_when_written:
                ended = self._end_turn(options, delivery.keeps_alive)
                if observed or timings:
                    seconds = (ended if ended is not None else monotonic()) - started
                    for hook in observed:
                        hook(self, delivery, error, seconds)
                    # (Each timing gets the duration, and the error if the turn failed.)
                    for timing in timings:
                        pending = timing.pending
                        pending.append(seconds)
                        if len(pending) > FLUSH_TIMINGS_AT:
                            timing.flush()
                        if error is not None:
                            timing.failed(error)

    def _queue_write(self, delivery: Delivery, payload: bytes, data: bytes, started: float) -> bool:
        """Hand the turn's write to a provider that queues writes (``storage.QueuedWrites``):
        the turn then ends in ``_written`` once the write committed, with no task left waiting
        for it. False when the provider cannot (the turn then awaits its write as usual). The
        write slot must be free, as the caller checked just before."""
        queue_write = self.silo.queue_write
        if queue_write is None:
            return False
        slot = self.slot
        assert slot is not None
        # Only one write of an activation is ever under way (``slot.writing``), so the turn that
        # waits for it can wait here rather than in a closure per write; and it keeps only what
        # its end needs (each object a waiting turn keeps alive costs garbage collection time).
        slot.start_write(data)
        self._queued_turn = (delivery, payload, started)
        try:
            queue_write(self.actor_id, data, slot.etag, self._written)
        except BaseException:
            self._queued_turn = None
            slot.end_write()
            raise
        return True

    def _written(self, outcome: str | Exception) -> None:
        """The end of a turn whose write was queued: reply once the write committed, or roll
        back and report the failure, then end the turn."""
        slot = self.slot
        assert self._queued_turn is not None and slot is not None and slot.in_flight is not None
        (delivery, payload, started), self._queued_turn = self._queued_turn, None
        method = delivery.method
        error = None
        try:
            if isinstance(outcome, Exception):
                slot.end_write()  # first: the rollback goes back past the failed write
                if isinstance(outcome, InconsistentStateError):
                    slot.fenced = True
                ok, payload, error = False, self._fail_turn(method, outcome, True), outcome
            else:
                slot.adopt(slot.in_flight, outcome)
                ok = True
                slot.end_write()
            if not method.options.one_way:
                self.silo.reply(delivery.request, ok, payload, ())
        finally:
            self._end_queued_turn(delivery, started, error)

    def _encode_ending(self, method: ActorMethod, result: Any, ending: TurnEnding) -> bytes:
        """The result's encoding; if it cannot be encoded the turn fails, and its ending is
        abandoned (the turn's work is not done)."""
        try:
            return self._encode_result(method, result)
        except BaseException:
            ending.abandon()
            raise

    def _end_later(
        self, delivery: Delivery, payload: bytes, started: float, ending: TurnEnding
    ) -> bool:
        """Start ``ending``; the turn ends in ``_ended`` when it is done, with no task left
        waiting for it (True). False if it could not start: the turn then ends as usual."""
        self._queued_turn = (delivery, payload, started)
        try:
            ending.start(self._ended)
        except BaseException as exc:  # (a TurnEnding must not raise: a capability's bug)
            get_logger().error("turn_ending_failed", actor=str(self.actor_id), error=repr(exc))
            if self._queued_turn is None:
                return True  # it reported an outcome before raising: the turn has ended
            self._queued_turn = None
            raise
        return True

    def _ended(self, error: Exception | None) -> None:
        """The end of a turn handed to a ``TurnEnding``: reply, then end the turn."""
        if self._queued_turn is None:
            return  # told twice (a capability's bug): the turn ended the first time
        (delivery, payload, started), self._queued_turn = self._queued_turn, None
        method = delivery.method
        try:
            ok = error is None
            if error is not None:
                payload = self._fail_turn(method, error, False)
            if not method.options.one_way:
                self.silo.reply(delivery.request, ok, payload, ())
        finally:
            self._end_queued_turn(delivery, started, error)

    def _end_queued_turn(self, delivery: Delivery, started: float, error: Exception | None) -> None:
        ended = self._end_turn(delivery.method.options, delivery.keeps_alive)
        timings = delivery.timings or ()
        if self.silo.on_turn_ended or timings:
            seconds = (ended if ended is not None else monotonic()) - started
            for hook in self.silo.on_turn_ended:
                hook(self, delivery, error, seconds)
            for timing in timings:  # (as _run_turn's end: every durable turn passes here)
                pending = timing.pending
                pending.append(seconds)
                if len(pending) > FLUSH_TIMINGS_AT:
                    timing.flush()
                if error is not None:
                    timing.failed(error)

    def _end_turn(self, options: MethodOptions, keeps_alive: bool = True) -> float | None:
        """End the turn's admission; the time it read at the end, when that was
        ``time.monotonic`` (the clock turns are timed by), else None."""
        # In the order enqueue and pump count turns in: a read-only method of a reentrant class
        # (or one that always interleaves) counts as interleaved, not as a reader.
        if self.options.reentrant or options.always_interleave:
            self.interleaved -= 1
        elif options.read_only:
            self.readers -= 1
        else:
            self.exclusive = False
        ended = None
        if keeps_alive:
            self.last_used = now = self.silo.clock.now()
            if self.silo.clock_is_monotonic:
                ended = now
        # The activation's own end first: a turn that asked to deactivate (deactivate_on_idle)
        # starts no queued call here; they go to the next activation.
        if self._idle_waiter is not None or self.deactivate_requested:
            self._turn_ended()
        self.pump()
        return ended

    def _encode_result(self, method: ActorMethod, result: Any) -> bytes:
        if result is None:
            return b""
        try:
            payload = encode(result)
        except SerializationError as exc:
            raise SerializationError(
                f"result of {self.actor_id.type_name}.{method.name}: {exc}"
            ) from None
        limit = self.silo.options.calls.max_message_bytes
        if len(payload) > limit:
            # Refused like an oversized argument; the turn fails, so its changes roll back.
            raise MessageTooLargeError(
                f"result of {self.actor_id.type_name}.{method.name} encodes to {len(payload)} "
                f"bytes, over the {limit}-byte message limit (max_message_bytes)"
            )
        return payload

    def _fail_turn(
        self,
        method: ActorMethod,
        exc: Exception,
        per_turn: bool,
        raised: BaseException | None = None,
    ) -> bytes:
        """Undo the turn's changes to the state and encode ``exc`` (or what the method
        ``raised``, when ``exc`` stands in for it) for the caller."""
        if per_turn:
            self.rollback()
        if isinstance(exc, InconsistentStateError) and self.slot is not None and self.slot.fenced:
            # A newer write exists: this activation is a stale duplicate. Drop it rather than
            # retry; the next call activates the actor afresh from storage. (Only when its own
            # write was fenced: one raised by an actor it called is that actor's business.)
            get_logger().warning("stale_activation_fenced", actor=str(self.actor_id))
            self.begin_deactivation(DeactivationReason.INCONSISTENT_STATE)
        elif method.options.one_way:
            # Nobody hears of a one-way call's failure but the log: a warning, where the
            # default level shows it (a call with a caller gets its error, logged at info).
            get_logger().warning(
                "one_way_call_failed",
                actor=str(self.actor_id),
                method=method.name,
                error=repr(exc),
            )
        else:
            get_logger().info(
                "call_failed",
                actor=str(self.actor_id),
                method=method.name,
                error=repr(exc),
            )
        return encode_error(exc if raised is None else raised, self._where(method))

    def rollback(self) -> None:
        """Put the instance's state back to the newest one stored or being written."""
        if self.slot is not None and self.instance is not None:
            self.instance.state = self.slot.rolled_back()

    def _enter_turn(self, chain: tuple[ActorId, ...]) -> CallChain:
        """Set the turn's context; its call chain, which the caller closes when the turn ends
        (see CallChain)."""
        # Runs inside the turn's own task, so these settings are private to the turn. (A set
        # costs more than a get; a runner's turns mostly leave the others as they were.)
        turn_chain = CallChain((*chain, self.actor_id) if chain else self._alone)
        current_chain.set(turn_chain)
        invoker = self.silo.caller
        if current_invoker.get() is not invoker:
            current_invoker.set(invoker)
        for variable, default in TURN_VARIABLES:  # a capability's scope sets its own after
            if variable.get() is not default:
                variable.set(default)
        return turn_chain


def stand_in(exc: BaseException, where: str) -> RemoteActorError:
    """An ``Exception`` standing for ``exc``, a ``BaseException`` that is none, where the
    runtime's own code (a capability's scope, the turn observers) expects an ``Exception``."""
    cls = type(exc)
    return RemoteActorError(f"{cls.__module__}.{cls.__qualname__}", f"{where}: {exc}")


def exit_error(exc: BaseException, where: str) -> RemoteActorError:
    """A method's (or hook's) ``SystemExit`` or own ``GeneratorExit`` as the error its caller
    gets (either, raised in the caller as it is, would end the caller's coroutine)."""
    name = type(exc).__name__
    meaning = "no exit" if isinstance(exc, SystemExit) else "nothing was being closed"
    return RemoteActorError(
        f"builtins.{name}", f"{where} raised {name}{exc.args!r} (a call's failure: {meaning})"
    )


def is_closing(exc: GeneratorExit) -> bool:
    """Whether ``exc``, caught in a coroutine, is that coroutine being closed (``close()``,
    as when the task running it is collected) rather than raised by the code it awaited.

    ``close()`` closes the innermost awaited coroutine first, then raises a fresh
    ``GeneratorExit`` at each awaiting frame's ``await`` in turn, so the one a frame catches
    has no traceback below that frame; one raised by awaited code (``raise GeneratorExit``
    in a method) has an entry for each frame it came up through (CPython 3.10 to 3.13).
    """
    traceback = exc.__traceback__
    return traceback is None or traceback.tb_next is None
