"""The operator's tools for sagas waiting for a person: list the STUCK and PARKED sagas of a
type (``Saga.attention``, ``saga_statuses``, ``raygrain sagas``), then resume or abort them.
Every cluster runs on the same SQLite file, restarted with changed code as a deploy would.
The CLI's ``run`` is driven with the command's own parser, on a local cluster."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from raygrain import (
    Cluster,
    InvalidArgumentsError,
    ReminderSettings,
    Retry,
    Saga,
    SagaPhase,
    SagaSettings,
    SagaVersionError,
    SqliteStorage,
    TerminalError,
    UnknownSagaError,
    step,
)
from raygrain.runtime.cli._main import _parser
from raygrain.runtime.cli._sagas import run
from raygrain.runtime.sagas import abort_saga, resume_saga, saga_statuses
from tests.helpers import wait_until
from tests.saga_app import Ledger

FAST = {
    "reminders": ReminderSettings(minimum_period=0.05),
    "sagas": SagaSettings(wake_period=0.1),
}
HOTEL_REFUSES = {"on": True}
GATES: dict[str, asyncio.Event] = {}


class Refunds(Saga[str], name="optest.Refunds"):
    """Reserve, whose compensation fails for good while the hotel refuses, then a charge that
    fails for good: the saga ends STUCK until the hotel takes cancellations again."""

    compensation_policy = Retry(first_delay=0.0, max_attempts=2)

    @step
    async def reserve(self, who: str) -> str:
        return await self.actors.get(Ledger, who).apply(self.idempotency_key, "reserve", who)

    @reserve.compensate
    async def release(self, who: str, booked: str | None) -> None:
        if HOTEL_REFUSES["on"]:
            raise TerminalError("the hotel refuses cancellations today")
        await self.actors.get(Ledger, who).undo(self.idempotency_key, "reserve")

    @step
    async def charge(self, who: str) -> str:
        raise TerminalError("card declined")


class Order1(Saga[str], name="optest.Order"):
    @step
    async def reserve(self, who: str) -> str:
        return await self.actors.get(Ledger, who).apply(self.idempotency_key, "reserve", who)

    @reserve.compensate
    async def release(self, who: str, booked: str | None) -> None:
        await self.actors.get(Ledger, who).undo(self.idempotency_key, "reserve")

    @step
    async def charge(self, who: str) -> str:
        if who in GATES:
            await GATES[who].wait()
        return await self.actors.get(Ledger, who).apply(self.idempotency_key, "charge", who)


class Order2(Order1, name="optest.Order"):
    version = 2


@pytest.fixture(autouse=True)
def _reset() -> None:
    HOTEL_REFUSES["on"] = True
    GATES.clear()


def _cluster(db: str, *sagas: type[Saga[str]], wake: float = 0.1) -> Cluster:
    settings = {**FAST, "sagas": SagaSettings(wake_period=wake)}
    return Cluster.local(
        actors=[Ledger, *sagas], storage=SqliteStorage(db), deactivation_timeout=0.2, **settings
    )


async def _cli(cluster: Cluster, *argv: str) -> tuple[int, str]:
    return await run(cluster, _parser().parse_args(["sagas", *argv]))


async def test_a_stuck_saga_is_listed_then_resumed_by_the_command(tmp_path: Path) -> None:
    db = str(tmp_path / "sagas.db")
    async with _cluster(db, Refunds) as first:
        await first.get(Refunds, "s").start("s")
        await first.get(Refunds, "fine").start("fine")  # also stuck: the hotel refuses

        async def both_stuck() -> bool:
            found = await Refunds.attention(first)
            return [(s.saga, s.phase) for s in found] == [
                ("fine", SagaPhase.STUCK),
                ("s", SagaPhase.STUCK),
            ]

        await wait_until(both_stuck, "both sagas to be listed as stuck")

    async with _cluster(db, Refunds) as second:  # restarted from the file
        code, text = await _cli(second, "--type", "optest.Refunds")
        assert code == 0
        assert text.splitlines()[0] == "2 stuck or parked saga(s) of type optest.Refunds:"
        assert (
            "  s: stuck (at reserve; compensation of 'reserve', attempt 1: TerminalError: "
            "the hotel refuses cancellations today)"
        ) in text.splitlines()
        code, text = await _cli(second, "--type", "optest.Refunds", "--phase", "parked")
        assert (code, text) == (0, "no parked saga of type optest.Refunds")

        HOTEL_REFUSES["on"] = False  # the operator fixed the cause
        code, text = await _cli(second, "--type", "optest.Refunds", "--resume", "s", "nobody")
        assert code == 1  # one refused
        lines = text.splitlines()
        assert lines[0].startswith("s: compensating (at reserve"), lines[0]
        assert lines[1].startswith("nobody: refused: no saga was started as")

        async def compensated() -> bool:
            return (await second.get(Refunds, "s").status()).phase is SagaPhase.COMPENSATED

        await wait_until(compensated, "the resumed saga to be compensated")
        assert (await second.get(Ledger, "s").books()).events == ["do reserve", "undo reserve"]
        # The other one was not resumed: still stuck, still listed.
        code, text = await _cli(second, "--type", "optest.Refunds", "--json")
        rows = json.loads(text)
        assert [(r["saga"], r["phase"]) for r in rows] == [("fine", "stuck")]
        assert rows[0]["compensated"] == []


async def test_a_parked_saga_is_listed_refused_then_resumed_and_aborted_under_its_code(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "sagas.db")
    GATES["a"] = asyncio.Event()
    GATES["b"] = asyncio.Event()
    async with _cluster(db, Order1) as first:
        for who in ("a", "b"):
            await first.get(Order1, who).start(who)
        await wait_until(
            lambda: all(GATES[w]._waiters for w in ("a", "b")), "both charges to start"
        )
        # The cluster stops with both sagas in their charge step (it never acted).

    async with _cluster(db, Order2) as second:  # version 2 deployed in place
        # Nothing activated them yet: the index still holds them as running, and the listing
        # asks each one's exact status.
        found = await saga_statuses(second, "optest.Order")
        assert [(s.saga, s.phase) for s in found] == [
            ("a", SagaPhase.PARKED),
            ("b", SagaPhase.PARKED),
        ]
        assert "it started as version 1" in found[0].error
        assert [s.saga for s in await Order2.attention(second)] == ["a", "b"]
        with pytest.raises(SagaVersionError, match="is parked"):
            await resume_saga(second, "optest.Order", "a")
        code, text = await _cli(second, "--type", "optest.Order", "--abort", "b")
        assert code == 1 and text.startswith("b: refused: saga optest.Order/b is parked"), text
        with pytest.raises(UnknownSagaError):
            await abort_saga(second, "optest.Order", "nobody")

    for gate in GATES.values():
        gate.set()
    # Version 1's code is back; the index wakes sagas only every hour here, so what moves
    # them is the operator's resume and abort.
    async with _cluster(db, Order1, wake=3600.0) as third:
        code, text = await _cli(third, "--type", "optest.Order", "--resume", "a")
        assert code == 0, text
        status = await abort_saga(third, "optest.Order", "b", "the customer called")
        assert status.phase in (SagaPhase.COMPENSATING, SagaPhase.COMPENSATED)
        results = await third.get(Order1, "a").result()
        assert results == {"reserve": "reserve:a", "charge": "charge:a"}

        async def b_compensated() -> bool:
            return (await third.get(Order1, "b").status()).phase is SagaPhase.COMPENSATED

        await wait_until(b_compensated, "the aborted saga to be compensated")
        assert (await third.get(Ledger, "a").books()).events == ["do reserve", "do charge"]
        assert (await third.get(Ledger, "b").books()).events == ["do reserve", "undo reserve"]
        assert (await third.get(Order1, "b").status()).reason == "aborted: the customer called"
        assert await Order1.attention(third) == []


def test_the_command_checks_its_arguments() -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["sagas", "--type", "x", "--resume", "a", "--abort", "b"])
    with pytest.raises(SystemExit):
        _parser().parse_args(["sagas"])  # --type is required


def test_the_command_says_when_ray_is_not_there(capsys: pytest.CaptureFixture[str]) -> None:
    from raygrain.runtime.cli import main

    assert main(["sagas", "--address", "127.0.0.1:1", "--type", "optest.Order"]) == 3
    assert "raygrain sagas: cannot connect to Ray at 127.0.0.1:1" in capsys.readouterr().err


async def test_a_misspelt_type_is_an_error_not_an_empty_list(tmp_path: Path) -> None:
    db = str(tmp_path / "sagas.db")
    async with _cluster(db, Refunds) as cluster:
        with pytest.raises(InvalidArgumentsError, match="unknown actor type 'optest.Refund'"):
            await _cli(cluster, "--type", "optest.Refund")
        with pytest.raises(InvalidArgumentsError, match="'sagatest.Ledger' is not a saga type"):
            await saga_statuses(cluster, "sagatest.Ledger")
        assert await _cli(cluster, "--type", "optest.Refunds") == (
            0,
            "no stuck or parked saga of type optest.Refunds",
        )
    async with Cluster.local(actors=[Ledger], storage=SqliteStorage(db)) as no_sagas:
        with pytest.raises(InvalidArgumentsError, match="this cluster has no saga type"):
            await saga_statuses(no_sagas, "optest.Refunds")
