"""Refusals: a step or compensation that cannot take the arguments a saga passes it is
refused at class definition; a refused saga operation leaves the saga as it was: a duplicate
start with another input (``SagaConflictError``) arriving while the saga runs, or while its
first start is being stored, neither undoes nor repeats anything of the saga.

The saga actor is reentrant, so a refusal interleaves with the saga's own turns; a refusal
that rolled the shared state back (as a failed writing turn does) discarded what those turns
had not yet written: every step ran again, and a start being stored was forgotten.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from raygrain import (
    ActorId,
    Cluster,
    ConfigurationError,
    MemoryStorage,
    Saga,
    SagaConflictError,
    SagaPhase,
    SagaStatus,
    StorageError,
    UnknownSagaError,
    step,
)
from tests import saga_app
from tests.helpers import still_pending, wait_until
from tests.saga_app import ATTEMPTS, GATES, STEPS, Ledger, Plan, Trip


@pytest.fixture(autouse=True)
def _reset_hooks() -> None:
    GATES.clear()
    ATTEMPTS.clear()


@pytest.fixture
async def sagas(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with Cluster.local(
        actors=saga_app.ACTORS, silos=2, storage=f"sqlite:///{tmp_path / 'sagas.db'}"
    ) as running:
        yield running


async def test_a_conflicting_start_while_a_step_runs_repeats_no_step(sagas: Cluster) -> None:
    trip = sagas.get(Trip, "busy")
    await trip.start(Plan(gate="flight"))

    async def flight_under_way() -> bool:
        return ATTEMPTS["busy/flight"] == 1

    await wait_until(flight_under_way, "busy: the flight step waits at its gate", 10)
    with pytest.raises(SagaConflictError, match="already started with another input"):
        await trip.start(Plan(fail="pay"))
    GATES["busy"].set()
    await trip.result()
    assert {name: ATTEMPTS[f"busy/{name}"] for name in STEPS} == dict.fromkeys(STEPS, 1)
    events = (await sagas.get(Ledger, "busy").books()).events
    assert sorted(events) == sorted(f"do {name}" for name in STEPS)


async def test_concurrent_starts_with_other_inputs_keep_the_first(sagas: Cluster) -> None:
    trip = sagas.get(Trip, "race")
    first, second = await asyncio.gather(
        trip.start(Plan()), trip.start(Plan(fail="pay")), return_exceptions=True
    )
    assert isinstance(first, SagaStatus), first
    assert isinstance(second, SagaConflictError), second
    assert (await trip.status()).phase is not SagaPhase.NOT_STARTED
    with pytest.raises(SagaConflictError):  # the saga is the first start's, not a third's
        await trip.start(Plan(fail="car"))
    assert set(await trip.result()) == set(STEPS)


class _HeldFirstWrite(MemoryStorage):
    """Holds the first write of ``saga`` until ``release`` is set, then fails it."""

    def __init__(self, saga: ActorId) -> None:
        super().__init__()
        self.saga, self.held, self.release = saga, asyncio.Event(), asyncio.Event()

    async def write(self, actor_id: ActorId, data: bytes, expected_etag: str | None) -> str:
        if actor_id == self.saga and not self.held.is_set():
            self.held.set()
            await self.release.wait()
            raise StorageError("the disk is full (injected)")
        return await super().write(actor_id, data, expected_etag)


async def test_a_duplicate_start_waits_for_the_first_starts_record() -> None:
    """A duplicate start (same input) arriving while the first start's record was being
    stored was told at once that the saga runs, and set its steps going, before anything was
    stored: when that write failed, the steps had all acted for a saga left NOT_STARTED
    (stored nowhere: nothing would ever compensate them after a crash)."""
    storage = _HeldFirstWrite(ActorId("sagatest.Trip", "held"))
    async with Cluster.local(actors=saga_app.ACTORS, storage=storage) as cluster:
        trip = cluster.get(Trip, "held")
        first = asyncio.ensure_future(trip.start(Plan()))
        await storage.held.wait()
        duplicate = asyncio.ensure_future(trip.start(Plan()))
        assert await still_pending(duplicate)  # not told anything before the record is stored
        assert not ATTEMPTS  # and no step acted
        storage.release.set()
        with pytest.raises(StorageError, match="injected"):
            await first
        status = await duplicate  # the first start was not stored: the duplicate stored it
        assert status.phase is SagaPhase.RUNNING
        assert set(await trip.result()) == set(STEPS)
        assert {name: ATTEMPTS[f"held/{name}"] for name in STEPS} == dict.fromkeys(STEPS, 1)


async def test_an_abort_waits_for_the_first_starts_record() -> None:
    """An abort arriving while the start's record was being stored was told the saga
    compensates; the write then failed, and the saga it had aborted did not exist."""
    storage = _HeldFirstWrite(ActorId("sagatest.Trip", "held"))
    async with Cluster.local(actors=saga_app.ACTORS, storage=storage) as cluster:
        trip = cluster.get(Trip, "held")
        first = asyncio.ensure_future(trip.start(Plan()))
        await storage.held.wait()
        abort = asyncio.ensure_future(trip.abort("changed my mind"))
        assert await still_pending(abort)
        storage.release.set()
        with pytest.raises(StorageError, match="injected"):
            await first
        with pytest.raises(UnknownSagaError):
            await abort
        assert (await trip.status()).phase is SagaPhase.NOT_STARTED


def test_a_step_that_cannot_take_the_input_is_refused_at_class_definition() -> None:
    # (It failed with a TypeError on every attempt, retried with backoff for minutes.)
    with pytest.raises(ConfigurationError, match=r"must take \(self, input\)"):

        class NoInput(Saga[int], name="sagatest.NoInput"):
            @step
            async def only(self) -> int:
                return 1


def test_a_compensation_that_cannot_take_the_result_is_refused_at_class_definition() -> None:
    # (It failed on every attempt: the saga ended STUCK.)
    with pytest.raises(ConfigurationError, match=r"must take \(self, input, result\)"):

        class NoResult(Saga[int], name="sagatest.NoResult"):
            @step
            async def book(self, input: int) -> int:
                return input

            @book.compensate
            async def cancel(self, input: int) -> None:
                pass
