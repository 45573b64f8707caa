"""Shared fixtures: in-process clusters over every test actor, closed after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from runtime import Cluster, ManualClock
from tests import app


@pytest.fixture(autouse=True)
def _reset_app_hooks() -> None:
    app.GATES.clear()
    app.EVENTS.clear()
    app.BARRIERS.clear()
    app.Recorder.activations = 0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def cluster(clock: ManualClock) -> AsyncIterator[Cluster]:
    async with Cluster.local(
        actors=app.ALL_ACTORS, silos=3, clock=clock, deactivation_timeout=0.5
    ) as running:
        yield running
