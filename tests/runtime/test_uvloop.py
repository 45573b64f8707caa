"""A cluster on uvloop, the loop Ray runs every silo on when uvloop is installed (a dependency
of raygrain, except on Windows): calls, deadlines and timers work, and turns are timed to the
microsecond, not by uvloop's clock, which reads whole milliseconds."""

from __future__ import annotations

import asyncio
import time

import pytest

from raygrain.actors import Actor, ActorCallTimeout
from raygrain.runtime import Cluster

uvloop = pytest.importorskip("uvloop")


class Quick(Actor[int], name="uvloop.Quick"):
    async def add(self, amount: int) -> int:
        self.state += amount
        return self.state

    async def stall(self) -> None:
        await asyncio.sleep(0.5)

    async def later(self) -> None:
        self.timers.after(0.01, self._tick)

    async def _tick(self) -> None:
        self.state += 100


async def _on_uvloop() -> None:
    assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
    async with Cluster.local(actors=[Quick], silos=2, metrics_port=0) as cluster:
        for silo in cluster.silos:
            # A turn starts by the silo's clock and ends by time.monotonic: read on uvloop's
            # clock (whole milliseconds, rounded down), every turn was timed up to 1 ms long.
            assert silo.loop_time is time.monotonic
        actor = cluster.get(Quick, "q")
        for _ in range(200):
            await actor.add(1)
        assert await actor.add(0) == 200
        with pytest.raises(ActorCallTimeout):
            await actor.with_timeout(0.05).stall()
        await actor.later()
        await asyncio.sleep(0.3)
        assert await actor.add(0) == 300
        assert cluster.metrics is not None
        assert (
            cluster.metrics.value(
                "raygrain_call_duration_seconds_count", side="callee", method="add"
            )
            == 202
        )


def test_a_cluster_runs_on_uvloop() -> None:
    uvloop.run(_on_uvloop())
