"""Durable sagas on an in-process cluster: steps, compensation in reverse order, retries with
backoff, idempotency, abort, timeout, stuck compensations, listing, restart.

Every outcome is checked on the participants' state (``tests.saga_app.Ledger``), not only on
what the saga reports. Backoffs and timeouts run on a ManualClock, so nothing sleeps.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from raygrain import (
    ActorCallTimeout,
    ActorId,
    Cluster,
    ConfigurationError,
    InvalidArgumentsError,
    InvalidCallError,
    ManualClock,
    MemoryStorage,
    ReminderSettings,
    Retry,
    Saga,
    SagaConflictError,
    SagaFailedError,
    SagaPhase,
    SagaSettings,
    SagaStatus,
    SqliteStorage,
    StorageError,
    UnknownSagaError,
    step,
)
from raygrain.actors import decode_state, encode_state
from raygrain.runtime.sagas._index import INDEX_TYPE, SagaIndexState, shard_key, shard_of
from raygrain.runtime.sagas._record import SagaRecord
from raygrain.storage import ReminderTable
from tests import saga_app
from tests.helpers import wait_until
from tests.runtime.time_helpers import settle
from tests.runtime.time_helpers import step as step_clock
from tests.saga_app import ATTEMPTS, BROKEN_COMPENSATIONS, GATES, REFUSED, Ledger, Plan, Trip


@pytest.fixture(autouse=True)
def _reset_hooks() -> None:
    GATES.clear()
    ATTEMPTS.clear()
    BROKEN_COMPENSATIONS.clear()
    REFUSED.clear()


@pytest.fixture
async def sagas(clock: ManualClock) -> AsyncIterator[Cluster]:
    async with Cluster.local(
        actors=saga_app.ACTORS, silos=2, clock=clock, deactivation_timeout=0.5
    ) as running:
        yield running


async def _books(cluster: Cluster, saga: str) -> saga_app.Books:
    return await cluster.get(Ledger, saga).books()


async def _until(saga: Trip, check: Callable[[SagaStatus], bool], what: str) -> SagaStatus:
    """Wait (yielding, never sleeping on time) until the saga's status passes ``check``."""
    found: list[SagaStatus] = []

    async def ready() -> bool:
        found[:] = [await saga.status()]
        return check(found[0])

    await wait_until(ready, f"{saga}: {what}", 10)
    return found[0]


async def test_every_step_succeeds(sagas: Cluster) -> None:
    trip = sagas.get(Trip, "ok")
    status = await trip.start(Plan())
    assert status.phase is SagaPhase.RUNNING
    results = await trip.result()
    assert results == {s: f"{s}:{s} for ok" for s in ("flight", "hotel", "car", "pay")}
    books = await _books(sagas, "ok")
    assert sorted(books.booked) == ["car", "flight", "hotel", "pay"]
    assert books.events[0] == "do flight" and books.events[-1] == "do pay"
    assert sorted(books.events[1:3]) == ["do car", "do hotel"]  # the parallel stage
    status = await trip.status()
    assert status.phase is SagaPhase.COMPLETED and status.finished
    assert status.completed == ("flight", "hotel", "car", "pay") and status.compensated == ()


async def test_a_terminal_failure_compensates_exactly_the_completed_steps_newest_first(
    sagas: Cluster,
) -> None:
    trip = sagas.get(Trip, "declined")
    await trip.start(Plan(fail="pay"))
    with pytest.raises(SagaFailedError) as failed:
        await trip.result()
    assert failed.value.phase == "compensated" and failed.value.saga == "sagatest.Trip/declined"
    assert str(failed.value) == (
        "saga sagatest.Trip/declined did not complete; its steps were compensated: step 'pay' "
        "failed after 1 attempt(s): TerminalError: pay refused"
    )
    books = await _books(sagas, "declined")
    assert books.booked == {}
    # Forward in order, then undone newest first: the parallel stage, then the flight.
    assert books.events[0] == "do flight" and sorted(books.events[1:3]) == ["do car", "do hotel"]
    assert sorted(books.events[3:5]) == ["undo car", "undo hotel"]
    assert books.events[5:] == ["undo flight"]
    status = await trip.status()
    assert status.phase is SagaPhase.COMPENSATED
    assert set(status.compensated) == {"flight", "hotel", "car"}
    assert ATTEMPTS["declined/pay"] == 1  # a terminal error is not retried


async def test_a_failure_in_the_first_stage_compensates_nothing_else(sagas: Cluster) -> None:
    trip = sagas.get(Trip, "no-seat")
    await trip.start(Plan(fail="flight"))
    with pytest.raises(SagaFailedError):
        await trip.result()
    assert (await _books(sagas, "no-seat")).events == []
    assert not [k for k in ATTEMPTS if k.startswith("no-seat/undo")]


async def test_a_retryable_failure_succeeds_on_retry_after_a_growing_backoff(
    clock: ManualClock,
) -> None:
    class Backoff(Trip, name="sagatest.Backoff"):
        retry_policy = Retry(first_delay=1.0, multiplier=2.0, max_delay=100.0, jitter=0.2)

    async with Cluster.local(actors=[Ledger, Backoff], clock=clock) as cluster:
        trip = cluster.get(Backoff, "flaky")
        await trip.start(Plan(flaky={"hotel": 2}))
        first = await _until(trip, lambda s: s.attempts == 1, "a first failure")
        assert first.current == ("hotel",) and first.completed == ("flight", "car")
        assert first.next_attempt_at is not None
        assert 0.8 <= first.next_attempt_at - clock.now() <= 1.0  # 1 s, less up to 20% jitter
        assert "ConnectionError: hotel: flaky, attempt 1" in first.error
        clock.advance(1.0)
        await settle(cluster)
        second = await _until(trip, lambda s: s.attempts == 2, "a second failure")
        assert second.next_attempt_at is not None
        assert 1.6 <= second.next_attempt_at - clock.now() <= 2.0  # doubled
        clock.advance(2.0)
        await settle(cluster)
        results = await trip.result()
        assert results["hotel"] == "hotel:hotel for flaky"
        books = await _books(cluster, "flaky")
        assert books.events.count("do hotel") == 1 and len(books.booked) == 4
        assert ATTEMPTS["flaky/hotel"] == 3


async def test_backoff_is_capped_and_attempts_are_limited() -> None:
    policy = Retry(first_delay=1.0, multiplier=2.0, max_delay=100.0, jitter=0.0, max_attempts=3)
    assert [policy.delay(n) for n in (1, 2, 3, 7, 8, 50)] == [1, 2, 4, 64, 100, 100]
    assert not policy.exhausted(2) and policy.exhausted(3)
    jittered = Retry(jitter=0.5)
    assert all(50 <= jittered.delay(20) <= 100 for _ in range(100))
    assert Retry(max_attempts=None).exhausted(10**6) is False


async def test_a_step_out_of_attempts_is_compensated_too_since_it_may_have_acted(
    sagas: Cluster,
) -> None:
    trip = sagas.get(Trip, "gave-up")
    await trip.start(Plan(flaky={"hotel": 99}))  # Trip allows 5 attempts, no backoff
    with pytest.raises(SagaFailedError, match="step 'hotel' failed after 5 attempt"):
        await trip.result()
    assert ATTEMPTS["gave-up/hotel"] == 5
    # A retryable error does not say the step did nothing: its compensation runs too (with
    # result None), beside the car's, then the flight's.
    assert ATTEMPTS["gave-up/undo hotel"] == 1 and ATTEMPTS["gave-up/undo car"] == 1
    books = await _books(sagas, "gave-up")
    assert books.booked == {} and books.events[-1] == "undo flight"
    assert ATTEMPTS["gave-up/pay"] == 0


async def test_a_step_that_failed_terminally_on_every_attempt_is_not_compensated(
    sagas: Cluster,
) -> None:
    trip = sagas.get(Trip, "refused")
    await trip.start(Plan(fail="car"))
    with pytest.raises(SagaFailedError):
        await trip.result()
    assert ATTEMPTS["refused/undo car"] == 0  # raised means no trace
    assert ATTEMPTS["refused/undo hotel"] == 1 and ATTEMPTS["refused/undo flight"] == 1


class Unstorable(Saga[str], name="sagatest.Unstorable"):
    @step
    async def book(self, who: str) -> object:
        await self.actors.get(Ledger, who).apply(self.idempotency_key, "book", who)
        return object()  # it acted, but what it returns cannot be stored

    @book.compensate
    async def unbook(self, who: str, result: object) -> None:
        await self.actors.get(Ledger, who).undo(self.idempotency_key, "book")


async def test_a_step_that_acted_but_returned_what_cannot_be_stored_is_compensated() -> None:
    async with Cluster.local(actors=[Ledger, Unstorable]) as cluster:
        saga = cluster.get(Unstorable, "u")
        await saga.start("u")
        with pytest.raises(SagaFailedError, match="SerializationError"):
            await saga.result()
        assert (await _books(cluster, "u")).events == ["do book", "undo book"]


class BadCallAfterActing(Saga[str], name="sagatest.BadCallAfterActing"):
    @step
    async def book(self, who: str) -> None:
        ledger = self.actors.get(Ledger, who)
        await ledger.apply(self.idempotency_key, "book", who)
        await ledger.apply(self.idempotency_key)  # type: ignore[call-arg]  # a bug: too few

    @book.compensate
    async def unbook(self, who: str, result: None) -> None:
        await self.actors.get(Ledger, who).undo(self.idempotency_key, "book")


async def test_a_step_that_acted_then_made_a_bad_call_is_compensated() -> None:
    """An error a retry cannot mend is not retried, but unlike a TerminalError the step
    raises to refuse, it does not say the step did nothing: an earlier call of the step may
    have acted (the booking was left behind)."""
    async with Cluster.local(actors=[Ledger, BadCallAfterActing]) as cluster:
        saga = cluster.get(BadCallAfterActing, "b")
        await saga.start("b")
        with pytest.raises(SagaFailedError, match="InvalidArgumentsError"):
            await saga.result()
        assert (await _books(cluster, "b")).events == ["do book", "undo book"]
        assert (await saga.status()).in_doubt == ("book",)


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("cannot render")


class RaisesOddly(Saga[str], name="sagatest.RaisesOddly"):
    retry_policy = Retry(first_delay=0, max_attempts=2)

    @step
    async def book(self, who: str) -> None:
        await self.actors.get(Ledger, who).apply(self.idempotency_key, "book", who)

    @book.compensate
    async def unbook(self, who: str, result: None) -> None:
        await self.actors.get(Ledger, who).undo(self.idempotency_key, "book")

    @step
    async def odd(self, who: str) -> None:
        ATTEMPTS[f"{who}/odd"] += 1
        if who == "cancelled":
            raise asyncio.CancelledError  # (a library's cancelled task, say)
        if who == "exits":
            raise SystemExit(3)
        raise _Unprintable


@pytest.mark.parametrize(
    ("who", "error"),
    [
        ("cancelled", "TurnCancelledError"),
        ("unprintable", r"_Unprintable: <str\(\) failed"),
        ("exits", "SystemExit"),
    ],
)
async def test_a_step_raising_cancelled_error_or_an_unprintable_error_fails_as_a_step(
    who: str, error: str
) -> None:
    """Either one failed the saga's whole advance, which ran the stage again every second
    for ever: no attempt counted, nothing compensated, no error shown."""
    async with Cluster.local(actors=[Ledger, RaisesOddly]) as cluster:
        saga = cluster.get(RaisesOddly, who)
        await saga.start(who)
        with pytest.raises(SagaFailedError, match=f"step 'odd' failed after 2 attempt.*{error}"):
            await saga.result()
        assert ATTEMPTS[f"{who}/odd"] == 2
        assert (await _books(cluster, who)).events == ["do book", "undo book"]


async def test_a_step_whose_outcome_was_unknown_is_retried_with_its_key_and_acts_once(
    sagas: Cluster,
) -> None:
    trip = sagas.get(Trip, "lost-reply")
    await trip.start(Plan(lose_reply="hotel"))
    results = await trip.result()
    assert results["hotel"] == "hotel:hotel for lost-reply"  # the first application's result
    assert ATTEMPTS["lost-reply/hotel"] == 2  # the step ran twice...
    books = await _books(sagas, "lost-reply")
    assert books.events.count("do hotel") == 1  # ...and acted once
    assert "sagatest.Trip/lost-reply/hotel" in books.applied


async def test_abort_stops_and_compensates_what_was_done_including_the_running_step(
    sagas: Cluster,
) -> None:
    trip = sagas.get(Trip, "aborted")
    await trip.start(Plan(gate="hotel"))
    await wait_until(lambda: ATTEMPTS["aborted/hotel"] == 1, "the hotel step to start")
    status = await trip.abort("customer cancelled")  # runs beside the step (reentrant)
    assert status.phase is SagaPhase.COMPENSATING
    with pytest.raises(ActorCallTimeout) as waited:
        await trip.result(wait=0)
    # The running stage's steps (it said 'flight', which nothing was undoing yet).
    assert "hotel" in status.current and "flight" not in status.current
    running = ", ".join(repr(name) for name in status.current)
    assert str(waited.value).startswith(
        f"saga sagatest.Trip/aborted is still compensating (waiting for {running} to end, "
        "then undoing) after 0 s: "
    )
    GATES["aborted"].set()  # the step finishes: what it did is recorded, then undone
    with pytest.raises(SagaFailedError, match="aborted: customer cancelled"):
        await trip.result()
    books = await _books(sagas, "aborted")
    assert books.booked == {} and "do hotel" in books.events  # the hotel was booked, then undone
    assert books.events[-1] == "undo flight"
    assert ATTEMPTS["aborted/pay"] == 0
    again = await trip.abort()  # an ended saga stays as it is
    assert again.phase is SagaPhase.COMPENSATED


async def test_abort_of_a_completed_saga_changes_nothing(sagas: Cluster) -> None:
    trip = sagas.get(Trip, "done")
    await trip.start(Plan())
    await trip.result()
    assert (await trip.abort()).phase is SagaPhase.COMPLETED
    assert len((await _books(sagas, "done")).booked) == 4


async def test_a_saga_past_its_timeout_is_compensated(clock: ManualClock) -> None:
    class Slow(Trip, name="sagatest.Slow"):
        retry_policy = Retry(first_delay=30.0, jitter=0.0, max_attempts=None)

    async with Cluster.local(actors=[Ledger, Slow], clock=clock) as cluster:
        trip = cluster.get(Slow, "late")
        await trip.start(Plan(flaky={"pay": 99}), timeout=10)
        waiting = await _until(trip, lambda s: s.attempts == 1, "pay's first failure")
        assert waiting.next_attempt_at == pytest.approx(clock.now() + 30.0)
        clock.advance(10.0)  # the deadline comes before the next attempt
        await settle(cluster)
        with pytest.raises(SagaFailedError, match="timed out after 10 s"):
            await trip.result()
        assert (await _books(cluster, "late")).booked == {}
        assert ATTEMPTS["late/pay"] == 1


LIVE_OR_DONE = (SagaPhase.RUNNING, SagaPhase.COMPLETED)


async def test_start_is_idempotent_on_the_saga_id(sagas: Cluster) -> None:
    trip = sagas.get(Trip, "twice")
    await trip.start(Plan())
    await trip.start(Plan())  # the same input: the same saga
    await trip.result()
    assert (await trip.start(Plan())).phase is SagaPhase.COMPLETED
    assert ATTEMPTS["twice/flight"] == 1
    with pytest.raises(SagaConflictError, match="already started with another input"):
        await trip.start(Plan(fail="pay"))
    # Equal inputs whose encodings differ (a dict's keys in another order, as a client that
    # rebuilds the input from JSON sends them) are the same input: they were a conflict.
    flaky = sagas.get(Trip, "keys")
    await flaky.start(Plan(flaky={"hotel": 1, "car": 1}))
    assert (await flaky.start(Plan(flaky={"car": 1, "hotel": 1}))).phase in LIVE_OR_DONE


async def test_a_saga_never_started_is_unknown(sagas: Cluster) -> None:
    ghost = sagas.get(Trip, "ghost")
    assert (await ghost.status()).phase is SagaPhase.NOT_STARTED
    for call in (ghost.result(), ghost.abort(), ghost.resume()):
        with pytest.raises(UnknownSagaError):
            await call


async def test_a_compensation_that_keeps_failing_leaves_the_saga_stuck_until_resumed(
    sagas: Cluster,
) -> None:
    BROKEN_COMPENSATIONS.add("stuck")
    trip = sagas.get(Trip, "stuck")
    await trip.start(Plan(fail="pay", broken_undo="flight"))
    with pytest.raises(SagaFailedError) as failed:
        await trip.result()
    assert failed.value.phase == "stuck"
    said = str(failed.value)  # the saga, why it stopped, and the cause to fix
    assert said.startswith(
        "saga sagatest.Trip/stuck did not complete and is stuck (a compensation failed for "
        "good; fix its cause, then resume() it): it stopped because step 'pay' failed"
    )
    assert said.endswith(
        "then a compensation failed for good: compensation of 'flight', attempt 3: "
        "RuntimeError: cannot cancel the flight right now"
    )
    status = await trip.status()
    assert status.phase is SagaPhase.STUCK and status.current == ("flight",)
    assert "compensation of 'flight', attempt 3: RuntimeError" in status.error

    async def listed_stuck() -> bool:  # (the index hears of an end a moment after it)
        return await Trip.list_sagas(sagas, SagaPhase.STUCK) == {"stuck": SagaPhase.STUCK}

    await wait_until(listed_stuck, "the index to list the saga as stuck")
    assert (await _books(sagas, "stuck")).booked == {"flight": "flight for stuck"}
    BROKEN_COMPENSATIONS.clear()  # the operator fixed the cause
    assert (await trip.resume()).phase is SagaPhase.COMPENSATING
    with pytest.raises(SagaFailedError, match="compensated"):
        await trip.result()
    assert (await _books(sagas, "stuck")).booked == {}


async def test_sagas_are_listed_by_phase(sagas: Cluster) -> None:
    await sagas.get(Trip, "a").start(Plan())
    await sagas.get(Trip, "b").start(Plan(fail="car"))
    await sagas.get(Trip, 7).start(Plan(gate="flight"))  # an int id
    await sagas.get(Trip, "a").result()
    with pytest.raises(SagaFailedError):
        await sagas.get(Trip, "b").result()

    async def listed() -> bool:
        return await Trip.list_sagas(sagas) == {
            "a": SagaPhase.COMPLETED,
            "b": SagaPhase.COMPENSATED,
            7: SagaPhase.RUNNING,
        }

    await wait_until(listed, "the index to record the ends")
    assert await Trip.list_sagas(sagas, SagaPhase.RUNNING) == {7: SagaPhase.RUNNING}
    GATES["7"].set()
    await sagas.get(Trip, 7).result()


async def test_result_waits_only_as_long_as_asked(sagas: Cluster) -> None:
    trip = sagas.get(Trip, "waiting")
    await trip.start(Plan(gate="flight"))
    with pytest.raises(ActorCallTimeout) as waited:
        await trip.result(wait=0)
    assert str(waited.value) == (
        "saga sagatest.Trip/waiting is still running (at step 'flight') after 0 s: it has no "
        "result yet (result(wait=SECONDS) waits longer; status() shows its progress)"
    )
    assert (await trip.status()).current == ("flight",)  # not blocked by the running step
    GATES["waiting"].set()
    await trip.result()


def _on_file(db: str, **options: Any) -> Cluster:
    """A cluster on the SQLite file ``db`` whose saga index wakes live sagas fast (what a
    restart test needs: nobody calls the saga on the new cluster)."""
    return Cluster.local(
        actors=saga_app.ACTORS,
        storage=SqliteStorage(db),
        reminders=ReminderSettings(minimum_period=0.05),
        sagas=SagaSettings(wake_period=0.1),
        **options,
    )


async def test_a_saga_resumes_after_a_restart_woken_by_its_index(tmp_path: Path) -> None:
    db = str(tmp_path / "sagas.db")
    async with _on_file(db, deactivation_timeout=0.2) as first:
        await first.get(Trip, "restart").start(Plan(gate="hotel"))
        await wait_until(lambda: ATTEMPTS["restart/hotel"] == 1, "the hotel step to start")
        # The cluster closes with the saga mid-stage (its hotel step never returns).
    GATES["restart"].set()
    async with _on_file(db) as second:
        # Nobody calls the saga: the index's reminder wakes it on the new cluster.
        async def ended() -> bool:
            return await Trip.list_sagas(second) == {"restart": SagaPhase.COMPLETED}

        await wait_until(ended, "the saga to finish after the restart")
        books = await _books(second, "restart")
        assert all(books.events.count(f"do {s}") == 1 for s in saga_app.STEPS)


async def test_a_crash_mid_stage_leaves_its_steps_in_doubt_and_compensated_if_they_may_have_acted(
    tmp_path: Path,
) -> None:
    """The process dies while a stage runs, after its hotel step acted but before the stage's
    progress committed. On the next activation the stage's steps are in doubt: retried with
    their keys, and compensated if the saga then fails, even when the retry says it did
    nothing (a terminal refusal). Without the marking the hotel booking would be orphaned."""
    db = str(tmp_path / "sagas.db")
    async with _on_file(db, deactivation_timeout=0.2) as first:
        await first.get(Trip, "cut").start(Plan(gate_after="hotel"))

        async def hotel_booked() -> bool:
            return "do hotel" in (await _books(first, "cut")).events

        await wait_until(hotel_booked, "the hotel step to act")
        assert (await first.get(Trip, "cut").status()).in_doubt == ()
        # The cluster closes with the hotel step still running: the stage never commits.
    REFUSED.add("cut/hotel")  # its retry refuses at once: "raised means no trace" of the retry
    async with _on_file(db) as second:
        trip = second.get(Trip, "cut")
        with pytest.raises(SagaFailedError, match="step 'hotel' failed after 1 attempt"):
            await trip.result()
        books = await _books(second, "cut")
        assert books.booked == {}  # no orphan: the hotel the first attempt booked was undone
        status = await trip.status()
        assert status.phase is SagaPhase.COMPENSATED
        assert status.in_doubt == ("hotel",)  # reported: it may have acted
        assert set(status.compensated) == {"flight", "hotel", "car"}
        assert all(books.events.count(f"do {s}") == 1 for s in ("flight", "hotel", "car"))
        assert ATTEMPTS["cut/undo hotel"] == 1 and ATTEMPTS["cut/hotel"] == 2
        assert ATTEMPTS["cut/car"] == 2  # retried with its key: the ledger did not book twice


async def test_an_abort_while_a_step_runs_undoes_that_step_after_a_restart(
    tmp_path: Path,
) -> None:
    """Aborted while its hotel step ran (after it booked), the cluster then stopped before
    the stage ended: the next activation compensated only the steps with results, the hotel
    booking was left behind, and the saga said COMPENSATED."""
    db = str(tmp_path / "sagas.db")
    async with _on_file(db, deactivation_timeout=0.2) as first:
        trip = first.get(Trip, "abort-stop")
        await trip.start(Plan(gate_after="hotel"))

        async def hotel_booked() -> bool:
            return "do hotel" in (await _books(first, "abort-stop")).events

        await wait_until(hotel_booked, "the hotel step to act")
        status = await trip.abort("customer called")
        assert status.phase is SagaPhase.COMPENSATING and "hotel" in status.in_doubt
        # The cluster closes with the hotel step still running.
    async with _on_file(db) as second:
        trip = second.get(Trip, "abort-stop")
        with pytest.raises(SagaFailedError, match="aborted: customer called"):
            await trip.result()
        assert (await _books(second, "abort-stop")).booked == {}
        status = await trip.status()
        assert status.phase is SagaPhase.COMPENSATED and "hotel" in status.compensated


class _FailingWrite(MemoryStorage):
    """Fails the first write of ``saga``'s progress past the hotel+car stage (and from then
    on its hotel step refuses)."""

    def __init__(self, saga: ActorId) -> None:
        super().__init__()
        self.saga, self.failed = saga, False

    async def write(self, actor_id: ActorId, data: bytes, expected_etag: str | None) -> str:
        past_the_stay = actor_id == self.saga and (
            decode_state(data, SagaRecord, str(actor_id)).stage == 2
        )
        if past_the_stay and not self.failed:
            self.failed = True
            REFUSED.add(f"{actor_id.key}/hotel")
            raise StorageError("the disk is full (injected)")
        return await super().write(actor_id, data, expected_etag)


async def test_a_stage_whose_progress_failed_to_commit_leaves_its_steps_in_doubt() -> None:
    """The write after the hotel+car stage fails: the record rolls back to before the stage,
    not the world (the hotel is booked). The stage runs again with its steps in doubt, so
    when the hotel's retry refuses terminally, the booking is still compensated."""
    storage = _FailingWrite(ActorId("sagatest.Trip", "disk"))
    async with Cluster.local(
        actors=saga_app.ACTORS, storage=storage, sagas=SagaSettings(retry_delay=0.05)
    ) as cluster:
        trip = cluster.get(Trip, "disk")
        await trip.start(Plan())
        with pytest.raises(SagaFailedError, match="step 'hotel' failed"):
            await trip.result()
        books = await _books(cluster, "disk")
        assert books.booked == {}  # the hotel its first attempt booked was undone
        assert books.events.count("do hotel") == 1 and "undo hotel" in books.events
        assert storage.failed and (await trip.status()).in_doubt == ("hotel",)


async def _async_noop(self: object, value: int) -> None:
    pass


def test_bad_definitions_are_refused() -> None:
    for taken in ("status", "state"):
        with pytest.raises(ConfigurationError, match="named after a saga operation|is reserved"):
            types.new_class(
                "Clash",
                (Saga[int],),
                {"name": "sagatest.Clash"},
                lambda body: body.update({taken: step(_async_noop)}),  # noqa: B023
            )

    # ``@a.compensate`` on a method named ``a`` (a property setter's pattern) would replace
    # the step it undoes: the saga would run without it.
    with pytest.raises(ConfigurationError, match="has the step's own name"):

        class SameName(Saga[int], name="sagatest.SameName"):
            @step
            async def a(self, value: int) -> None:
                pass

            @a.compensate
            async def a(self, value: int, result: None) -> None:  # type: ignore[no-redef]
                pass

    with pytest.raises(ConfigurationError, match="@step decorates an async method"):

        class NotAsync(Saga[int], name="sagatest.NotAsync"):
            @step  # type: ignore[arg-type]
            def plain(self, value: int) -> None: ...

    with pytest.raises(ConfigurationError, match="max_attempts must be an int >= 1"):
        Retry(max_attempts=0)
    with pytest.raises(ConfigurationError, match="jitter must be between 0 and 1"):
        Retry(jitter=2)
    with pytest.raises(ConfigurationError, match="terminal must be a tuple of exception types"):
        Retry(terminal=(int,))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="retry_policy must be a Retry"):

        class BadPolicy(Saga[int], name="sagatest.BadPolicy"):
            retry_policy = 3  # type: ignore[assignment]

    with pytest.raises(ConfigurationError, match="wake_period must be a positive number"):
        SagaSettings(wake_period=0)
    with pytest.raises(ConfigurationError, match="sagas must be a SagaSettings, got int"):
        Cluster.local(actors=saga_app.ACTORS, sagas=3)  # type: ignore[arg-type]


async def test_bad_calls_get_typed_errors_and_the_saga_goes_on(sagas: Cluster) -> None:
    class Empty(Saga[int], name="sagatest.Empty"):
        pass

    trip = sagas.get(Trip, "bad")
    for timeout in (-1, float("nan"), float("inf")):  # (NaN would mean no deadline at all)
        with pytest.raises(InvalidArgumentsError, match="timeout must be a positive number"):
            await trip.start(Plan(), timeout=timeout)
    for phase in ("running", 3):
        with pytest.raises(InvalidArgumentsError, match="phase must be a SagaPhase"):
            await Trip.list_sagas(sagas, phase)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentsError, match="wait must be seconds >= 0"):
        await trip.result(wait=-1)
    await trip.start(Plan())
    assert (await trip.result())["pay"] == "pay:pay for bad"
    with pytest.raises(InvalidCallError, match="only known inside a step"):
        _ = Trip.__new__(Trip).current_step
    async with Cluster.local(actors=[Empty]) as cluster:
        with pytest.raises(ConfigurationError, match="has no steps"):
            await cluster.get(Empty, 1).start(1)
    assert asyncio.get_running_loop()  # (the silo survived every error above)


async def test_the_index_forgets_a_saga_that_never_started_and_keeps_the_newest_ended(
    clock: ManualClock,
) -> None:
    settings = {
        "reminders": ReminderSettings(minimum_period=1.0),
        "sagas": SagaSettings(wake_period=1.0, keep_finished=2),
    }
    async with Cluster.local(actors=saga_app.ACTORS, clock=clock, **settings) as cluster:  # type: ignore[arg-type]
        shard = shard_key("sagatest.Trip", shard_of("ghost"))
        index = cluster.ref(INDEX_TYPE, shard)
        # A start that was recorded in the index but never committed: the index holds it live.
        await index.record([("ghost", "running")])
        storage = cluster.storage
        assert isinstance(storage, ReminderTable)
        assert [r.name for r in await storage.reminders_of(ActorId(INDEX_TYPE, shard))]
        await step_clock(cluster, clock, 1.0)  # the index's tick wakes it; it is not started

        async def forgotten() -> bool:
            return await index.entries() == []

        await wait_until(forgotten, "the index to forget the saga that never started")
        await step_clock(cluster, clock, 1.0)  # nothing live: the index stops its reminder
        assert await storage.reminders_of(ActorId(INDEX_TYPE, shard)) == []
        await index.record([(f"s{n}", "completed") for n in range(4)])
        assert await index.entries() == [("s2", "completed"), ("s3", "completed")]


class _FailingIndexWrite(MemoryStorage):
    """Fails, once, the write of an index shard that is giving up its reminder (no live
    saga left): as if the process died between the reminder's removal and that write."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    async def write(self, actor_id: ActorId, data: bytes, expected_etag: str | None) -> str:
        if actor_id.type_name == INDEX_TYPE and not self.failed:
            state = decode_state(data, SagaIndexState, str(actor_id))
            if not state.live and not state.reminded:
                self.failed = True
                raise StorageError("the disk is full (injected)")
        return await super().write(actor_id, data, expected_etag)


_WAKE_EVERY_SECOND = {
    "reminders": ReminderSettings(minimum_period=1.0),
    "sagas": SagaSettings(wake_period=1.0),
}


async def _woken_and_forgotten(cluster: Cluster, clock: ManualClock, shard: str) -> None:
    """The shard's tick wakes the saga it holds live (never started), which has it forgotten."""
    index = cluster.ref(INDEX_TYPE, shard)
    await step_clock(cluster, clock, 1.0)

    async def forgotten() -> bool:
        return await index.entries(SagaPhase.RUNNING.value) == []

    await wait_until(forgotten, f"{shard} to wake its live saga")


async def test_an_index_shard_that_lost_its_reminder_half_way_still_wakes_its_next_sagas(
    clock: ManualClock,
) -> None:
    """A shard's last live saga ended; its next tick removed its reminder, and the write of
    the shard's state after it failed (a crash there does the same): the shard must not
    believe it still holds a reminder, or a saga it records live later is never woken."""
    storage = _FailingIndexWrite()
    async with Cluster.local(
        actors=saga_app.ACTORS, clock=clock, storage=storage, **_WAKE_EVERY_SECOND
    ) as cluster:  # type: ignore[arg-type]
        shard = shard_key("sagatest.Trip", shard_of("ghost"))
        index = cluster.ref(INDEX_TYPE, shard)
        await index.record([("earlier", "running")])
        await index.record([("earlier", "completed")])
        await step_clock(cluster, clock, 1.0)  # nothing live: the reminder goes; the write fails
        assert storage.failed
        await index.record([("ghost", "running")])  # (a start recorded, never committed)
        assert [r.name for r in await storage.reminders_of(ActorId(INDEX_TYPE, shard))]
        await _woken_and_forgotten(cluster, clock, shard)


async def test_an_index_shard_stored_as_reminded_without_its_reminder_registers_it_again(
    clock: ManualClock,
) -> None:
    """A store left by the code before the fix above: a live saga, the shard's flag saying
    it is reminded, and no reminder. Activated (by a listing here), the shard registers it."""
    storage = MemoryStorage()
    shard = shard_key("sagatest.Trip", shard_of("ghost"))
    lost = SagaIndexState(live={"ghost": "running"}, reminded=True)
    await storage.write(ActorId(INDEX_TYPE, shard), encode_state(lost), None)
    async with Cluster.local(
        actors=saga_app.ACTORS, clock=clock, storage=storage, **_WAKE_EVERY_SECOND
    ) as cluster:  # type: ignore[arg-type]
        assert await Trip.list_sagas(cluster) == {"ghost": SagaPhase.RUNNING}
        assert [r.name for r in await storage.reminders_of(ActorId(INDEX_TYPE, shard))]
        await _woken_and_forgotten(cluster, clock, shard)
