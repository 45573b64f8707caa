"""The lag of a projection, as a figure (``lag()``) and as a metric, while it is stuck behind
the log (runtime/events/_runner.py, runtime/metrics/)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from raygrain import Cluster, MemoryStorage
from tests import events_app
from tests.events_app import ES_ACTORS, Account, Balances
from tests.helpers import bounded

CATEGORY = Account.__actor_options__.name


@pytest.fixture(autouse=True)
def _open_gates() -> None:
    events_app.GATES.clear()


async def _until(check: Callable[[], float], want: float) -> None:
    # The heads are read once a second, off the projection's loop: wait for that reading.
    while check() != want:
        await asyncio.sleep(0.05)


async def test_a_stuck_projection_reports_its_lag_as_a_figure_and_a_metric() -> None:
    # A handler that hangs (a slow read-model store) held the loop that read the heads, so
    # the metric stayed at the lag of before it hung (0) while the log ran on.
    async with Cluster.local(actors=ES_ACTORS, storage=MemoryStorage()) as cluster:
        balances = Balances.of(cluster)
        first = await cluster.get(Account, "a").deposit(1)
        await balances.read("a", first)
        events_app.GATES["Balances"] = gate = asyncio.Event()  # the projection now hangs
        for _ in range(5):
            await cluster.get(Account, "a").deposit(1)
        assert await balances.lag() == {CATEGORY: 5}
        metrics = cluster.metrics
        assert metrics is not None

        def lag() -> float:
            return metrics.value("raygrain_projection_lag_events", projection="es.Balances")

        try:
            await bounded(_until(lag, 5.0), "the lag metric to read 5 events")
            assert metrics.value("raygrain_projection_position", projection="es.Balances") == 1
        finally:
            gate.set()
        written = await cluster.get(Account, "a").deposit(1)
        await balances.read("a", written)
        assert await balances.lag() == {CATEGORY: 0}
        await bounded(_until(lag, 0.0), "the lag metric to read 0 once caught up")
