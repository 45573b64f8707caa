"""Changing a saga's definition while sagas of it are in flight: a saga runs only under the
version and steps it started with; under other code it is parked (``SagaPhase.PARKED``, a
``SagaVersionError`` for what cannot be done), never run against the wrong steps, and it
resumes when code of its version serves it again.

Three definitions share one saga type name, as a deployment would change it in place:
``Version1`` (reserve, then charge), ``Version2`` (version 2, a step added) and
``Version1Renamed`` (a step renamed without raising the version). Each cluster restarts
from the same SQLite file with one of them.
"""

from __future__ import annotations

import asyncio
import types
from collections import Counter
from pathlib import Path

import pytest

from raygrain import (
    Cluster,
    ConfigurationError,
    ReminderSettings,
    Retry,
    Saga,
    SagaPhase,
    SagaSettings,
    SagaVersionError,
    SqliteStorage,
    TerminalError,
    step,
)
from tests.helpers import wait_until
from tests.saga_app import Ledger

NAME = "sagatest.Versioned"
FAST = {
    "reminders": ReminderSettings(minimum_period=0.05),
    "sagas": SagaSettings(wake_period=0.1),
}
CHARGE_GATES: dict[str, asyncio.Event] = {}
RUNS: Counter[str] = Counter()  # "<saga>/<step>": attempts seen


async def _book(saga: Saga[str], who: str, name: str) -> str:
    RUNS[f"{who}/{name}"] += 1
    return await saga.actors.get(Ledger, who).apply(saga.idempotency_key, name, who)


async def _charge(saga: Saga[str], who: str) -> str:
    RUNS[f"{who}/charge"] += 1
    if who in CHARGE_GATES:
        await CHARGE_GATES[who].wait()
    return await saga.actors.get(Ledger, who).apply(saga.idempotency_key, "charge", who)


class Version1(Saga[str], name=NAME):
    retry_policy = Retry(first_delay=0.0, max_attempts=3)

    @step
    async def reserve(self, who: str) -> str:
        return await _book(self, who, "reserve")

    @reserve.compensate
    async def release(self, who: str, booked: str | None) -> None:
        await self.actors.get(Ledger, who).undo(self.idempotency_key, "reserve")

    @step
    async def charge(self, who: str) -> str:
        return await _charge(self, who)


class Version2(Version1, name=NAME):
    version = 2

    @step
    async def notify(self, who: str) -> str:
        return await _book(self, who, "notify")


class Version1Renamed(Saga[str], name=NAME):
    """Version 1's steps with one renamed, the version left as it was: caught by the steps
    stored with each saga."""

    @step
    async def reserve(self, who: str) -> str:
        return await _book(self, who, "reserve")

    @step
    async def bill(self, who: str) -> str:
        return await _book(self, who, "bill")


@pytest.fixture(autouse=True)
def _reset() -> None:
    CHARGE_GATES.clear()
    RUNS.clear()


def _cluster(db: str, saga: type[Saga[str]]) -> Cluster:
    return Cluster.local(
        actors=[Ledger, saga], storage=SqliteStorage(db), deactivation_timeout=0.2, **FAST
    )


async def test_a_saga_in_flight_is_parked_under_changed_code_and_resumes_under_its_own(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "sagas.db")
    CHARGE_GATES["old"] = asyncio.Event()
    async with _cluster(db, Version1) as first:
        await first.get(Version1, "old").start("old")
        await wait_until(lambda: RUNS["old/charge"] == 1, "the charge step to start")
        # The cluster stops with the saga in its charge step (it never acted).

    async with _cluster(db, Version2) as second:  # version 2 deployed in place
        parked = second.get(Version2, "old")
        status = await parked.status()
        assert status.phase is SagaPhase.PARKED and not status.finished
        assert "version 1 with the steps reserve | charge" in status.error
        assert "version 2 with the steps reserve | charge | notify" in status.error
        assert status.current == () and status.completed == ("reserve",)
        with pytest.raises(SagaVersionError, match="is parked: it started as version 1"):
            await parked.result()
        with pytest.raises(SagaVersionError):  # its compensations are version 1's
            await parked.abort("give up")

        async def listed() -> bool:
            return await Version2.list_sagas(second, SagaPhase.PARKED) == {"old": SagaPhase.PARKED}

        await wait_until(listed, "the index to list the saga as parked")
        # New sagas run under version 2 meanwhile.
        await second.get(Version2, "new").start("new")
        assert set(await second.get(Version2, "new").result()) == {"reserve", "charge", "notify"}
        # Nothing of the parked saga ran under version 2's steps.
        assert (await second.get(Ledger, "old").books()).events == ["do reserve"]
        assert RUNS["old/charge"] == 1 and RUNS["old/notify"] == 0

    async with _cluster(db, Version1Renamed) as third:  # a step renamed, version kept
        status = await third.get(Version1Renamed, "old").status()
        assert status.phase is SagaPhase.PARKED
        assert "this code is version 1 with the steps reserve | bill" in status.error
        assert RUNS["old/bill"] == 0

    CHARGE_GATES["old"].set()
    async with _cluster(db, Version1) as fourth:  # version 1's code is back
        # Nobody calls the saga: the index, which held it as parked, wakes it.
        async def ended() -> bool:
            return (await Version1.list_sagas(fourth)).get("old") is SagaPhase.COMPLETED

        await wait_until(ended, "the parked saga to finish under its own version")
        books = await fourth.get(Ledger, "old").books()
        assert books.events == ["do reserve", "do charge"]
        status = await fourth.get(Version1, "old").status()
        assert status.phase is SagaPhase.COMPLETED and status.error == ""


class StuckVersion1(Saga[str], name="sagatest.Stuck"):
    """Reserve, whose compensation refuses for good, then a charge that fails for good: the
    saga ends STUCK."""

    @step
    async def reserve(self, who: str) -> str:
        return await _book(self, who, "reserve")

    @reserve.compensate
    async def release(self, who: str, booked: str | None) -> None:
        raise TerminalError("the hotel's system refuses cancellations today")

    @step
    async def charge(self, who: str) -> str:
        raise TerminalError("card declined")


class StuckVersion2(StuckVersion1, name="sagatest.Stuck"):
    version = 2


async def test_a_stuck_saga_under_changed_code_still_shows_stuck(tmp_path: Path) -> None:
    db = str(tmp_path / "sagas.db")
    async with _cluster(db, StuckVersion1) as first:
        saga = first.get(StuckVersion1, "s")
        await saga.start("s")

        async def stuck() -> bool:
            return (await saga.status()).phase is SagaPhase.STUCK

        await wait_until(stuck, "the saga to be stuck")

        async def listed() -> bool:
            found = await StuckVersion1.list_sagas(first, SagaPhase.STUCK)
            return found == {"s": SagaPhase.STUCK}

        await wait_until(listed, "the index to list the saga as stuck")

    async with _cluster(db, StuckVersion2) as second:
        saga2 = second.get(StuckVersion2, "s")
        status = await saga2.status()
        assert status.phase is SagaPhase.STUCK and status.finished
        assert status.current == ()  # (the steps to compensate are version 1's)
        assert "refuses cancellations" in status.error
        assert "its definition changed: it started as version 1" in status.error
        with pytest.raises(SagaVersionError, match="is parked"):
            await saga2.resume()
        listed = await StuckVersion2.list_sagas(second, SagaPhase.STUCK)
        assert listed == {"s": SagaPhase.STUCK}


async def _async_noop(self: object, value: str) -> None:
    pass


@pytest.mark.parametrize("version", [0, -1, True, "2", 1.5], ids=repr)
def test_a_version_must_be_a_positive_int(version: object) -> None:
    with pytest.raises(ConfigurationError, match="version must be an int >= 1"):
        types.new_class(
            "BadVersion",
            (Saga[str],),
            {"name": "sagatest.BadVersion"},
            lambda body: body.update({"version": version, "only": step(_async_noop)}),
        )


def test_version_is_not_a_step_name() -> None:
    with pytest.raises(ConfigurationError, match="named after a saga operation"):
        types.new_class(
            "StepNamedVersion",
            (Saga[str],),
            {"name": "sagatest.StepNamedVersion"},
            lambda body: body.update({"version": step(_async_noop)}),
        )
