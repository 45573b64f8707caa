"""Helpers for timer and reminder tests on a ManualClock: advance, then wait for the ticks.

``settle`` waits (yielding to the event loop, never sleeping on time) until every silo's
schedule has fired what is due and every tick it started has ended; with a ManualClock nothing
new comes due until the test advances it again, so counts read afterwards are exact.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from raygrain.runtime import Cluster, ManualClock
from raygrain.runtime.kernel import _logging
from raygrain.runtime.timers import TimeService


async def settle(cluster: Cluster, what: str = "ticks", limit: float = 10.0) -> None:
    services = [s.extension(TimeService) for s in cluster.silos]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    spins = 0
    while not all(s is not None and s.quiet() for s in services):
        if loop.time() > deadline:
            raise AssertionError(f"{what} did not settle within {limit} s of real time")
        spins += 1
        # Yield; once a tick waits on a storage thread, yield without spinning hot.
        await asyncio.sleep(0 if spins < 200 else 0.001)
    for _ in range(3):  # let the callbacks of the last ticks run
        await asyncio.sleep(0)


async def step(cluster: Cluster, clock: ManualClock, seconds: float, times: int = 1) -> None:
    """Advance ``clock`` by ``seconds``, ``times`` times, settling after each."""
    for _ in range(times):
        clock.advance(seconds)
        await settle(cluster)


class CapturedLogs:
    def __init__(self) -> None:
        self.capture = structlog.testing.LogCapture()

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.capture.entries if e.get("event") == name]


def capture_logs(monkeypatch: Any) -> CapturedLogs:
    captured = CapturedLogs()
    logger = structlog.wrap_logger(None, processors=[captured.capture])
    monkeypatch.setattr(_logging, "_logger", logger)
    return captured
