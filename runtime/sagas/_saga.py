"""``Saga``: the base class of a durable saga. A saga instance is a virtual actor keyed by its
saga id; its state is its progress (``SagaRecord``), committed after every step.

    class BookTrip(Saga[Trip], name="trip.BookTrip"):
        @step
        async def flight(self, trip: Trip) -> str:
            return await self.actors.get(Airline, trip.airline).book(self.idempotency_key, trip.who)

        @flight.compensate
        async def cancel_flight(self, trip: Trip, booking: str | None) -> None:
            await self.actors.get(Airline, trip.airline).cancel(self.idempotency_key)

    status = await cluster.get(BookTrip, "trip-42").start(trip)
    results = await cluster.get(BookTrip, "trip-42").result()

Operations (the saga actor's methods): ``start`` (idempotent on the saga id), ``status``,
``result``, ``abort``, ``resume`` (a stuck saga), and ``list_sagas`` (a class method: the
sagas of a type, by phase).
"""

from __future__ import annotations

import asyncio
import builtins
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from raygrain.actors import (
    RESERVED,
    Actor,
    ActorCallTimeout,
    ActorKey,
    ActorRef,
    ConfigurationError,
    InvalidArgumentsError,
    InvalidCallError,
    SagaConflictError,
    SagaFailedError,
    SagaVersionError,
    SiloUnavailableError,
    UnknownSagaError,
    always_interleave,
    decode,
    encode,
    one_way,
    read_only,
)
from raygrain.runtime.sagas._definition import Retry, Step, check_seconds, stages_of
from raygrain.runtime.sagas._driver import (
    SagaDriver,
    changed_definition,
    current_step,
    stop_forward,
    to_compensate,
)
from raygrain.runtime.sagas._index import INDEX_SHARDS, INDEX_TYPE, shard_key
from raygrain.runtime.sagas._operator import saga_statuses
from raygrain.runtime.sagas._record import LIVE, SagaPhase, SagaRecord, SagaStatus, StepContext

__all__ = ["Saga"]

I = TypeVar("I")  # noqa: E741  # the saga's input

_OPERATIONS = frozenset(
    {"start", "status", "result", "abort", "resume", "wake", "list_sagas", "results"}
    | {"attention"}
    | {"current_step", "idempotency_key", "retry_policy", "compensation_policy", "timeout"}
    | {"version"}
    | RESERVED
)
_RESULT_POLL = 0.25  # how often a result() waiter checks that its activation still serves


class _References(Protocol):
    """What ``list_sagas`` needs: ``Cluster`` or an actor's ``self.actors``."""

    def ref(self, type_name: str, key: ActorKey) -> ActorRef: ...


class Saga(Actor[SagaRecord], Generic[I], reentrant=True):
    """Base class of durable sagas; ``I`` is the input type. Steps are methods decorated with
    ``@step`` (see ``raygrain.step``), run in definition order, each committed before the next
    starts. Class attributes: ``retry_policy`` (steps' default ``Retry``: 10 attempts, 1 s
    doubling to 100 s), ``compensation_policy`` (compensations': 20 attempts, then the saga
    is stuck), ``timeout`` (seconds, None: none; ``start`` may override it), ``version`` (an
    int, 1 by default: raise it when a change would make the progress of sagas already
    started mean something else; each saga runs only under the version and steps it started
    with, and is parked otherwise: see docs/sagas.md, "Changing a saga").

    A saga actor is reentrant: its calls (``status``, ``abort``, a waiting ``result``) run
    beside the turn that runs its steps, never queued behind it."""

    retry_policy: ClassVar[Retry] = Retry()
    compensation_policy: ClassVar[Retry] = Retry(max_attempts=20)
    timeout: ClassVar[float | None] = None
    version: ClassVar[int] = 1
    __saga_stages__: ClassVar[tuple[tuple[Step, ...], ...]] = ()
    __saga_steps__: ClassVar[str] = ""  # the stages by name, stored with each saga

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.__saga_stages__ = stages_of(cls, _OPERATIONS)
        cls.__saga_steps__ = " | ".join(
            "+".join(s.name for s in stage) for stage in cls.__saga_stages__
        )
        if isinstance(cls.version, bool) or not isinstance(cls.version, int) or cls.version < 1:
            raise ConfigurationError(
                f"{cls.__qualname__}.version must be an int >= 1, got {cls.version!r}"
            )
        for label in ("retry_policy", "compensation_policy"):
            if not isinstance(getattr(cls, label), Retry):
                raise ConfigurationError(f"{cls.__qualname__}.{label} must be a Retry")
        if cls.timeout is not None:
            check_seconds(f"{cls.__qualname__}.timeout", cls.timeout)

    # -- inside a step ---------------------------------------------------------------------------

    @property
    def current_step(self) -> StepContext:
        """The running step (or compensation): its name, idempotency key and attempt."""
        found = current_step.get()
        if found is None:
            raise InvalidCallError(
                f"{type(self).__qualname__}.current_step is only known inside a step or a "
                "compensation"
            )
        return found

    @property
    def idempotency_key(self) -> str:
        """The running step's idempotency key: ``<saga type>/<saga id>/<step>``, the same for
        each of its attempts and for its compensation. Pass it to what the step calls."""
        return self.current_step.key

    @property
    def results(self) -> dict[str, Any]:
        """The results of the steps completed so far, by step name."""
        return {name: decode(data) if data else None for name, data in self.state.results.items()}

    # -- operations --------------------------------------------------------------------------------

    # Read-only for the kernel: start writes its record itself (below). A refusal (another
    # input, a bad timeout) then raises without the failed turn rolling the shared state
    # back, which, in this reentrant actor, discarded the unwritten progress of a stage under
    # way (its steps ran again) or of a start being stored (forgotten in memory).
    @read_only
    async def start(self, input: I, timeout: float | None = None) -> SagaStatus:
        """Start the saga with ``input`` (idempotent: starting it again with the same input
        returns its status; with another input raises ``SagaConflictError``). ``timeout``:
        seconds before it gives up and compensates (default: the class's ``timeout``)."""
        data = encode(input)
        driver = await self._start_settled()
        started = self._started(data)
        if started is not None:
            return started
        cls = type(self)
        if not cls.__saga_stages__:
            raise ConfigurationError(f"{cls.__qualname__} has no steps; add methods with @step")
        if timeout is None:
            timeout = cls.timeout
        else:
            timeout = check_seconds(
                f"{self.context.id}.start: timeout", timeout, InvalidArgumentsError
            )
        now = driver.service.now()
        record = self.state
        record.phase = SagaPhase.RUNNING.value
        record.input = data
        record.version = cls.version
        record.steps = cls.__saga_steps__
        record.started = now
        record.timeout = None if timeout is None else float(timeout)
        record.deadline = None if timeout is None else now + float(timeout)
        # Stored, and recorded as live in the saga index (which wakes every live saga after a
        # restart), before the first step runs and before the caller hears of it.
        driver.reported = ""
        driver.starting = starting = asyncio.Event()
        saved = False

        async def save() -> None:
            nonlocal saved
            await self.context.save()
            saved = True

        try:
            await asyncio.gather(save(), driver.service.record(self.context.id, record.phase))
            driver.reported = record.phase
        except BaseException:
            if not saved:  # (what the kernel's rollback did: not stored, not started)
                self.state = SagaRecord()
            raise
        finally:
            driver.starting = None
            starting.set()
            driver.kick()  # (if the index failed, the driver records it before going on)
        return self._status()

    async def _start_settled(self) -> SagaDriver:
        """The driver, once no start's record is being stored. (This reentrant actor
        interleaves calls with a start's write: answered meanwhile, a duplicate start was told
        the saga runs, and set its steps going, and an abort was told it compensates, before
        anything was stored; if that write failed, the saga was left not started.)"""
        driver = self._driver()
        while driver.starting is not None:
            await driver.starting.wait()
        return driver

    def _started(self, data: bytes) -> SagaStatus | None:
        record = self.state
        if record.phase == SagaPhase.NOT_STARTED.value:
            return None
        if record.input != data and not _equal_inputs(record.input, data):
            raise SagaConflictError(
                f"saga {self.context.id} was already started with another input"
            )
        self._driver().kick()  # (in case the first start failed half-way)
        return self._status()

    @read_only
    async def status(self) -> SagaStatus:
        return self._status()

    @read_only
    @always_interleave
    async def result(self, wait: float = 25.0) -> dict[str, Any]:
        """The results of every step, by name, once the saga completed: waits up to ``wait``
        seconds for it (raising ``ActorCallTimeout`` if it is still running then; the call's
        own deadline, 30 s by default, must be longer). A saga that ended otherwise raises
        ``SagaFailedError``."""
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not wait >= 0:
            raise InvalidArgumentsError(f"result: wait must be seconds >= 0, got {wait!r}")
        driver = self._driver()
        loop = asyncio.get_running_loop()
        end = loop.time() + min(float(wait), 1e9)
        while True:
            record = self.state
            if record.phase == SagaPhase.NOT_STARTED.value:
                raise UnknownSagaError(f"no saga was started as {self.context.id}")
            self._check_definition()
            if driver.ended.is_set() and record.phase not in LIVE:
                if record.phase == SagaPhase.COMPLETED.value:
                    return self.results
                raise SagaFailedError(str(self.context.id), record.phase, self._why_failed())
            if driver.gone:
                raise SiloUnavailableError(
                    f"{self.context.id}: the saga moved while result() waited; call it again"
                )
            left = end - loop.time()
            if left <= 0:
                raise ActorCallTimeout(
                    f"saga {self.context.id} is still {self._doing()} after {wait:g} s: it has "
                    "no result yet (result(wait=SECONDS) waits longer; status() shows its "
                    "progress)"
                )
            try:
                await asyncio.wait_for(driver.ended.wait(), min(left, _RESULT_POLL))
            except TimeoutError:
                pass

    async def abort(self, reason: str = "aborted") -> SagaStatus:
        """Stop going forward and compensate the completed steps, newest first. A saga that
        has already ended stays as it is."""
        await self._start_settled()
        record = self.state
        if record.phase == SagaPhase.NOT_STARTED.value:
            raise UnknownSagaError(f"no saga was started as {self.context.id}")
        self._check_definition()  # (its compensations are another definition's)
        if record.phase == SagaPhase.RUNNING.value:
            driver = self._driver()
            stages = type(self).__saga_stages__
            if driver.busy and record.wait_until is None and record.stage < len(stages):
                # A stage may be under way (this call interleaves with it): its steps may
                # act before it ends, or before the process dies. In doubt from now, so that
                # whoever compensates (this activation or the next) undoes them too.
                record.in_doubt.extend(
                    s.name
                    for s in stages[record.stage]
                    if s.name not in record.results and s.name not in record.in_doubt
                )
            stop_forward(record, f"aborted: {reason}")
            driver.kick()
        return self._status()

    async def resume(self) -> SagaStatus:
        """Retry the compensations of a stuck saga (after an operator fixed their cause); try
        a parked saga (after code of its version was deployed) or one backing off between
        attempts now rather than at its next wake. Raises ``SagaVersionError`` while the code
        serving it is not of its version. An ended saga stays as it is."""
        record = self.state
        if record.phase == SagaPhase.NOT_STARTED.value:
            raise UnknownSagaError(f"no saga was started as {self.context.id}")
        if record.phase in LIVE:
            self._check_definition()
            record.wait_until = None
            self._driver().kick()
        elif record.phase == SagaPhase.STUCK.value:
            self._check_definition(stuck=True)
            record.phase = SagaPhase.COMPENSATING.value
            record.attempts.clear()
            record.ended = None
            driver = self._driver()
            driver.ended.clear()
            driver.kick()
        return self._status()

    @one_way
    async def wake(self) -> None:
        """Sent by the saga index to the sagas it holds as live (after a restart or a
        failover): activating the saga resumes it."""
        if self.state.phase == SagaPhase.NOT_STARTED.value:
            # Its start never committed: the index holds it live for nothing.
            await self._driver().service.record(self.context.id, self.state.phase)
            return
        self._driver().kick()

    @classmethod
    async def list_sagas(
        cls, cluster: _References, phase: SagaPhase | None = None
    ) -> dict[ActorKey, SagaPhase]:
        """The sagas of this type (``cluster``: a ``Cluster`` or an actor's ``self.actors``),
        by id, with their phase as the saga index last recorded it (it may lag a step behind:
        ``status()`` is exact); only those in ``phase`` if given."""
        if phase is not None and not isinstance(phase, SagaPhase):
            raise InvalidArgumentsError(
                f"{cls.__qualname__}.list_sagas: phase must be a SagaPhase "
                f"({', '.join(f'SagaPhase.{p.name}' for p in SagaPhase)}) or None, "
                f"got {phase!r}"
            )
        type_name = cls.__actor_options__.name
        shards = await asyncio.gather(
            *(
                cluster.ref(INDEX_TYPE, shard_key(type_name, n)).entries(
                    None if phase is None else phase.value
                )
                for n in range(INDEX_SHARDS)
            )
        )
        return {key: SagaPhase(found) for shard in shards for key, found in shard}

    @classmethod
    async def attention(cls, cluster: _References) -> builtins.list[SagaStatus]:
        """The sagas of this type that wait for an operator (STUCK or PARKED), with their
        exact status, by id: see ``resume`` and ``abort`` (and ``raygrain sagas``)."""
        return await saga_statuses(cluster, cls.__actor_options__.name)

    # -- internals -------------------------------------------------------------------------------

    def _driver(self) -> SagaDriver:
        return self._context.service("saga")  # type: ignore[no-any-return]

    def _doing(self) -> str:
        """What a live saga is doing, for a message: its phase (RUNNING or COMPENSATING) and
        the steps at hand."""
        status = self._status()
        steps = ", ".join(repr(name) for name in status.current)
        if not steps:
            return status.phase.value
        if status.phase is SagaPhase.COMPENSATING:
            if self._driver().stepping:  # (aborted or timed out while a stage ran)
                return f"compensating (waiting for {steps} to end, then undoing)"
            return f"compensating (undoing {steps})"
        return f"running (at {'step' if len(status.current) == 1 else 'steps'} {steps})"

    def _why_failed(self) -> str:
        """Why an ended saga did not complete: why it stopped and, if it is stuck, the error
        of the compensation that failed for good (the cause an operator must fix)."""
        record = self.state
        if record.phase == SagaPhase.STUCK.value and record.error:
            stopped = f"it stopped because {record.reason}; " if record.reason else ""
            return f"{stopped}then a compensation failed for good: {record.error}"
        return record.reason or record.error or "no reason recorded"

    def _check_definition(self, stuck: bool = False) -> None:
        record = self.state
        if record.phase in LIVE or stuck:
            why = changed_definition(type(self), record)
            if why:
                raise SagaVersionError(
                    f"saga {self.context.id} is parked: {why}. It runs again when code of "
                    "its version serves it (keep that class registered until its sagas "
                    "end; give a new definition a new name)"
                )

    def _status(self) -> SagaStatus:
        record = self.state
        stages = type(self).__saga_stages__
        current: builtins.list[str] = []
        stuck = record.phase == SagaPhase.STUCK.value
        changed = (record.phase in LIVE or stuck) and changed_definition(type(self), record)
        parked = changed if not stuck else ""
        error = record.error
        if changed:
            # Its current steps are another definition's. A stuck saga stays STUCK (it is not
            # running: nothing parks it), and says why resume() would refuse.
            error = (
                f"parked: {changed}" if parked else f"{error}; its definition changed: {changed}"
            )
        elif record.phase == SagaPhase.RUNNING.value and record.stage < len(stages):
            current = [s.name for s in stages[record.stage] if s.name not in record.results]
        elif record.phase in (SagaPhase.COMPENSATING.value, SagaPhase.STUCK.value):
            current = [s.name for s in to_compensate(stages, record)]
        return SagaStatus(
            saga=self.context.key,
            phase=SagaPhase.PARKED if parked else SagaPhase(record.phase),
            current=tuple(current),
            completed=tuple(record.results),
            compensated=tuple(record.compensated),
            in_doubt=tuple(s for s in record.in_doubt if s not in record.results),
            attempts=max(record.attempts.values(), default=0),
            error=error,
            reason=record.reason,
            started_at=None if record.phase == SagaPhase.NOT_STARTED.value else record.started,
            ended_at=record.ended,
            next_attempt_at=record.wait_until,
        )


def _equal_inputs(stored: bytes, given: bytes) -> bool:
    """Whether two encodings hold equal inputs (as Python compares them: a dict's keys in
    another order, say, as a client rebuilding it from JSON sends them)."""
    try:
        return bool(decode(stored) == decode(given))
    except Exception:
        return False
