"""The driver of one saga activation: runs its steps forward, or its compensations backward,
one turn of the saga actor at a time.

Each advance is an internal turn (``run_as_turn``): it runs the current stage's steps (in
parallel within a stage), records their outcomes in the saga's state, and writes that state
before the next stage starts (an advance runs stages while there is one to run now: the last
one's write is the turn's commit). So the progress is durable after every step, and a crash
at any point resumes from the last committed stage: a step whose progress did not commit
runs again, with the same idempotency key. Other calls (``status``, ``abort``) run beside an
advance (the saga actor is reentrant); a backoff wait is a schedule entry, never a sleeping
turn.

A step that failed with an unknown outcome (a lost silo, a timeout, or a turn cut short by a
crash) is "in doubt": if the saga then compensates, the step's compensation runs too, with
``result=None``, since the step may have acted.
"""

from __future__ import annotations

import asyncio
import random
from contextvars import ContextVar
from typing import Any, ClassVar, Protocol

from raygrain.actors import (
    ActorContext,
    ActorId,
    DeactivationReason,
    RemoteActorError,
    TurnCancelledError,
    decode,
    encode,
)
from raygrain.runtime.kernel import (
    DROPPED,
    Activation,
    ActivationState,
    Silo,
    TurnOutcome,
    get_logger,
    run_as_turn,
    turn_variable,
)
from raygrain.runtime.sagas._definition import Retry, Step
from raygrain.runtime.sagas._record import LIVE, SagaPhase, SagaRecord, StepContext
from raygrain.runtime.timers import TimeService

__all__ = [
    "EXTRAS_KEY",
    "SagaDriver",
    "changed_definition",
    "current_step",
    "stop_forward",
    "to_compensate",
]

EXTRAS_KEY = "saga"
current_step: ContextVar[StepContext | None] = ContextVar("raygrain_saga_step", default=None)
turn_variable(current_step, None)

_SERVING = (ActivationState.ACTIVATING, ActivationState.VALID)
_RUNNING = SagaPhase.RUNNING.value
_COMPENSATING = SagaPhase.COMPENSATING.value
_NOT_STARTED = SagaPhase.NOT_STARTED.value
_PARKED = SagaPhase.PARKED.value
# (succeeded, the encoded result, the error, whether it certainly ran to its end)
_Outcome = tuple[bool, bytes, BaseException | None, bool]
# Jitter for the backoffs of every saga (one generator: seeding one per saga cost ~40 us).
_JITTER = random.Random()


class Saga(Protocol):
    """What the driver uses of a saga (an instance of ``_saga.Saga``)."""

    retry_policy: ClassVar[Retry]
    compensation_policy: ClassVar[Retry]
    version: ClassVar[int]
    __saga_stages__: ClassVar[tuple[tuple[Step, ...], ...]]
    __saga_steps__: ClassVar[str]

    @property
    def state(self) -> SagaRecord: ...

    @property
    def context(self) -> ActorContext: ...


class _Settings(Protocol):
    @property
    def retry_delay(self) -> float: ...


class SagaService(Protocol):
    """What the driver uses of the silo's saga service (``_extension.SagaService``)."""

    @property
    def silo(self) -> Silo: ...

    @property
    def time(self) -> TimeService: ...

    @property
    def settings(self) -> _Settings: ...

    def now(self) -> float: ...

    def record(self, saga: ActorId, phase: str) -> asyncio.Future[None]: ...


class SagaDriver:
    """Drives one saga activation (kept in ``Activation.extras``)."""

    __slots__ = (
        "activation",
        "busy",
        "ended",
        "entry",
        "finished",
        "reported",
        "reporting",
        "resumed",
        "service",
        "starting",
        "stepping",
    )

    def __init__(self, activation: Activation, service: SagaService) -> None:
        self.activation = activation
        self.service = service
        self.busy = False  # an advance is queued or running
        self.entry: Any = None  # the next advance, after a backoff
        self.resumed = False  # activated with a stage under way: its steps are in doubt
        self.ended = asyncio.Event()  # set once the saga's end is committed
        self.reported = ""  # the phase the saga index holds, as far as this activation knows
        self.reporting = False
        self.finished = False  # the saga ended in this activation
        self.stepping = False  # a forward stage's steps are running
        self.starting: asyncio.Event | None = None  # set once a start's record is stored or not

    @classmethod
    def of(cls, activation: Activation, service: SagaService) -> SagaDriver:
        extras = activation.extras
        if extras is None:
            extras = activation.extras = {}
        found = extras.get(EXTRAS_KEY)
        if found is None:
            found = extras[EXTRAS_KEY] = cls(activation, service)
        return found

    @property
    def saga(self) -> Saga:
        return self.activation.instance  # type: ignore[return-value]

    @property
    def gone(self) -> bool:
        return self.activation.state not in _SERVING

    # -- scheduling -----------------------------------------------------------------------------

    def kick(self) -> None:
        """Record the saga's phase in the index if it has not been, and advance the saga now
        if it has something to do (or arm its next attempt). A live saga advances only once
        the index holds it live, so that a crash never leaves a saga nobody wakes."""
        if self.gone or self.activation.instance is None:
            return
        record: SagaRecord = self.saga.state
        phase = record.phase
        if phase == _NOT_STARTED or (self.busy and phase not in LIVE):
            return  # (an end not committed yet: the advance's end kicks again)
        if phase in LIVE and changed_definition(type(self.saga), record):
            # Never run against the wrong steps: parked (listed so, and woken every period
            # by the index) until code of its version serves it.
            if self.reported != _PARKED and not self.reporting:
                get_logger().warning(
                    "saga_parked",
                    saga=str(self.activation.actor_id),
                    why=changed_definition(type(self.saga), record),
                )
                self.reporting = True
                self.service.silo.spawn(self._report(_PARKED))
            return
        if phase != self.reported and not self.reporting:
            self.reporting = True
            self.service.silo.spawn(self._report(phase))
        if phase not in LIVE:
            self.ended.set()  # (kick runs after a commit, or on a state loaded from storage)
            if self.finished and self.reported == phase:
                # It ended here and the index knows: free its memory now rather than after
                # the idle timeout (a later call activates it from storage).
                self.finished = False
                self.activation.begin_deactivation(DeactivationReason.REQUESTED)
            return
        if self.busy or self.reported not in LIVE:
            return  # (the end of the advance, or of the report, kicks again)
        due = self._due(record)
        if due is not None and due > self.service.now():
            self._arm(due)
            return
        self._disarm()
        self.busy = True
        run_as_turn(self.activation, "saga", self._advance, self._advanced, keep_alive=True)

    async def _report(self, phase: str) -> None:
        try:
            await self.service.record(self.activation.actor_id, phase)
            self.reported = phase
        except Exception as exc:
            if self.gone or self.service.silo.closed:
                return  # (going away: the next activation records it)
            if not isinstance(exc, LookupError):  # (an empty ring: the cluster is stopping)
                get_logger().warning(
                    "saga_index_failed", saga=str(self.activation.actor_id), error=repr(exc)
                )
            self.service.time.schedule.after(self.service.settings.retry_delay, self.kick)
            return
        finally:
            self.reporting = False
        self.kick()

    @staticmethod
    def _due(record: SagaRecord) -> float | None:
        due = record.wait_until
        if due is not None and record.phase == _RUNNING and record.deadline is not None:
            due = min(due, record.deadline)
        return due

    def _arm(self, when: float) -> None:
        self._disarm()
        self.entry = self.service.time.schedule.at(when, self.kick)

    def _disarm(self) -> None:
        if self.entry is not None:
            self.entry.cancel()
            self.entry = None

    def stop(self) -> None:
        """The activation is going away (its successor resumes the saga)."""
        self._disarm()

    def _advanced(self, outcome: TurnOutcome) -> None:
        self.busy = False
        if self.activation.instance is not None:
            self.finished = self.saga.state.phase not in LIVE
        if outcome == DROPPED:
            return  # the activation went away first; the next one resumes
        if isinstance(outcome, Exception):
            # The turn's commit failed (or a rollback of an interleaved turn hit it): its
            # changes were rolled back, so the same advance runs again after a pause.
            get_logger().warning(
                "saga_advance_failed", saga=str(self.activation.actor_id), error=repr(outcome)
            )
            # What the stage's steps did was rolled back from the record, not from the world:
            # they are in doubt, as after a crash.
            self.resumed = True
            if not self.gone:
                self._arm(self.service.now() + self.service.settings.retry_delay)
            return
        self.kick()

    # -- one advance (a turn of the saga) ---------------------------------------------------------

    async def _advance(self) -> None:
        """Run stages (forward, or compensations backward) while there is one to run now,
        writing the saga's progress after each before the next starts; the turn's own commit
        writes the last. One turn for several stages: a turn per stage cost the same writes
        and a turn's dispatch more."""
        saga = self.saga
        record: SagaRecord = saga.state
        while True:
            progress = (record.phase, record.stage, len(record.compensated))
            if record.phase == _RUNNING:
                await self._forward(saga, record, self.service.now())
            elif record.phase == _COMPENSATING:
                await self._backward(saga, record, self.service.now())
            if (
                record.phase not in LIVE  # ended: the turn's commit, then the index hears
                or record.wait_until is not None  # a backoff: kick arms the next attempt
                or progress == (record.phase, record.stage, len(record.compensated))
                or self.gone
            ):
                return
            # Durable before the next stage starts (an error here fails the turn: it rolls
            # back to what is stored, and the stage runs again after retry_delay).
            await saga.context.save()

    async def _forward(self, saga: Saga, record: SagaRecord, now: float) -> None:
        cls = type(saga)
        stages = cls.__saga_stages__
        if record.deadline is not None and now >= record.deadline:
            stop_forward(record, f"timed out after {record.timeout:g} s")
            return
        if record.wait_until is not None and now < record.wait_until:
            return
        record.wait_until = None
        if record.stage >= len(stages):
            _finish(record, SagaPhase.COMPLETED, now)
            return
        pending = [s for s in stages[record.stage] if s.name not in record.results]
        if self.resumed:
            # Activated again with this stage under way: its last attempt may have acted
            # before the process died without committing what it learned.
            self.resumed = False
            record.in_doubt.extend(s.name for s in pending if s.name not in record.in_doubt)
        self.stepping = True
        try:
            outcomes = await self._attempt(saga, record, pending, False)
        finally:
            self.stepping = False
        waits: list[float] = []
        final = ""
        for found, (ok, value, error, acted) in zip(pending, outcomes, strict=True):
            if ok:
                record.results[found.name] = value
                record.attempts.pop(found.name, None)
                continue
            assert error is not None
            retry = found.retry or cls.retry_policy
            failed = record.attempts[found.name] = record.attempts.get(found.name, 0) + 1
            record.error = f"step {found.name!r}, attempt {failed}: {_describe(error)}"
            terminal = retry.is_terminal(error)
            # In doubt unless the step said it did nothing (a TerminalError, a type of
            # Retry.terminal): an error a retry cannot mend (a bad call) may come from a call
            # after one that acted.
            if (acted or not retry.did_nothing(error)) and found.name not in record.in_doubt:
                record.in_doubt.append(found.name)
            if terminal or retry.exhausted(failed):
                final = final or f"step {found.name!r} failed after {failed} attempt(s): " + (
                    _describe(error)
                )
            waits.append(retry.delay(failed, _JITTER))
        if record.phase != _RUNNING:
            return  # aborted while the steps ran: what they did is recorded, to be undone
        if final:
            stop_forward(record, final)
        elif waits:
            record.wait_until = now + max(waits)
        else:
            record.stage += 1
            if record.stage >= len(stages):
                _finish(record, SagaPhase.COMPLETED, now)

    async def _backward(self, saga: Saga, record: SagaRecord, now: float) -> None:
        cls = type(saga)
        if record.wait_until is not None and now < record.wait_until:
            return
        record.wait_until = None
        todo = to_compensate(cls.__saga_stages__, record)
        outcomes = await self._attempt(saga, record, todo, True)
        waits: list[float] = []
        stuck = False
        for found, (ok, _, error, _) in zip(todo, outcomes, strict=True):
            key = f"undo {found.name}"
            if ok:
                record.compensated.append(found.name)
                record.attempts.pop(key, None)
                continue
            assert error is not None
            retry = found.compensation_retry or cls.compensation_policy
            failed = record.attempts[key] = record.attempts.get(key, 0) + 1
            record.error = f"compensation of {found.name!r}, attempt {failed}: {_describe(error)}"
            if retry.is_terminal(error) or retry.exhausted(failed):
                stuck = True
            else:
                waits.append(retry.delay(failed, _JITTER))
        if stuck:
            _finish(record, SagaPhase.STUCK, now)
        elif waits:
            record.wait_until = now + max(waits)
        elif not to_compensate(cls.__saga_stages__, record):
            _finish(record, SagaPhase.COMPENSATED, now)

    async def _attempt(
        self, saga: Saga, record: SagaRecord, steps: list[Step], compensating: bool
    ) -> list[_Outcome]:
        if len(steps) == 1:  # (in the turn's own task: its current_step is the turn's)
            return [await self._run(saga, record, steps[0], compensating)]
        return await asyncio.gather(*(self._run(saga, record, s, compensating) for s in steps))

    async def _run(
        self, saga: Saga, record: SagaRecord, found: Step, compensating: bool
    ) -> _Outcome:
        """One attempt of a step or of its compensation (in a task of its own, so that its
        ``current_step`` is its own)."""
        key = f"undo {found.name}" if compensating else found.name
        result = None
        if compensating and found.name in record.results:
            result = _decoded(record.results[found.name])
        saga_id = saga.context.id
        current_step.set(
            StepContext(
                saga_id.key,
                found.name,
                f"{saga_id.type_name}/{saga_id.key}/{found.name}",
                record.attempts.get(key, 0) + 1,
                compensating,
                result,
            )
        )
        try:
            data = _decoded(record.input)
            if compensating:
                assert found.compensation is not None
                await found.compensation(saga, data, result)
                return True, b"", None, True
            result = await found.function(saga, data)
        except Exception as exc:
            return False, b"", exc, False
        except SystemExit as exc:  # (the step's failure, not the silo's exit)
            error = RemoteActorError(
                f"builtins.{type(exc).__name__}", f"step {key!r} raised {exc!r}"
            )
            return False, b"", error, False
        except asyncio.CancelledError as exc:
            # (Task.cancelling is Python 3.11's; on 3.10 every cancellation is taken as the
            # turn's own.)
            cancelling = getattr(asyncio.current_task(), "cancelling", None)
            if cancelling is None or cancelling():
                raise  # the saga's own turn is cancelled (its activation is going away)
            # The step raised it (a library's cancelled task, say): the step's failure, its
            # outcome unknown, retried as any other; not the advance's, which would run the
            # stage again for ever with no attempt counted.
            return False, b"", TurnCancelledError(f"step {key!r} raised {exc!r}"), False
        try:
            return True, encode(result), None, True
        except Exception as exc:  # (it acted, but what it returned cannot be stored)
            return False, b"", exc, True


def to_compensate(stages: tuple[tuple[Step, ...], ...], record: SagaRecord) -> list[Step]:
    """The compensations to run next: those of the newest stage with a step that completed (or
    may have acted) and is not compensated yet."""
    touched = set(record.results) | set(record.in_doubt)
    done = set(record.compensated)
    for stage in reversed(stages[: record.stage + 1]):
        todo = [
            s
            for s in stage
            if s.compensation is not None and s.name in touched and s.name not in done
        ]
        if todo:
            return todo
    return []


def changed_definition(cls: type[Saga], record: SagaRecord) -> str:
    """Why ``record``'s progress cannot be run by ``cls`` (it started under another version
    of the saga, or other steps), or "" if it can."""
    if not record.steps or (record.version == cls.version and record.steps == cls.__saga_steps__):
        return ""
    return (
        f"it started as version {record.version} with the steps {record.steps}; this code "
        f"is version {cls.version} with the steps {cls.__saga_steps__ or '(none)'}"
    )


def stop_forward(record: SagaRecord, reason: str) -> None:
    """Stop going forward: compensate from here (a step failed, an abort, a timeout)."""
    record.phase = _COMPENSATING
    record.reason = reason
    record.attempts.clear()
    record.wait_until = None


def _finish(record: SagaRecord, phase: SagaPhase, now: float) -> None:
    record.phase = phase.value
    record.ended = now
    record.wait_until = None
    if phase is not SagaPhase.STUCK:
        record.attempts.clear()


def _decoded(data: bytes) -> Any:
    return decode(data) if data else None


def _describe(error: BaseException) -> str:
    try:
        text = str(error)
    except Exception as failure:  # (the step's exception's own __str__ failed)
        text = f"<str() failed: {failure!r}>"
    return f"{type(error).__name__}: {text}"
