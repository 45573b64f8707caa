"""The child process of tests/runtime/test_saga_crash.py: sagas on a SQLite file until killed.

    python -m tests.saga_crash_app DB_PATH SAGAS run      # start every saga, run until killed
    python -m tests.saga_crash_app DB_PATH SAGAS finish   # start nothing; wait until all ended

``run`` starts the sagas ``0..SAGAS-1`` one after another (starting is idempotent, so a run
after a kill starts those it had not, and resumes the rest by activating them), prints
``started`` once the first is, and goes on until killed. ``finish`` starts only the sagas the
index does not list (never started before the kills) and calls no other: the saga index's
reminders wake the live ones. It waits until the index holds none live, then prints ``KEY
PHASE`` for each saga and exits.
"""

from __future__ import annotations

import asyncio
import sys

from raygrain import Cluster, ReminderSettings, SagaPhase, SagaSettings, SqliteStorage
from tests.saga_app import ACTORS, Plan, Trip

SETTINGS = {
    "reminders": ReminderSettings(minimum_period=0.05),
    "sagas": SagaSettings(wake_period=0.2, retry_delay=0.05),
    "deactivation_timeout": 0.2,
}


def plan(saga: int) -> Plan:
    """Each saga's input, the same in every run (so that starting it again is idempotent)."""
    return Plan(
        fail={1: "pay", 2: "car"}.get(saga % 4, ""),
        flaky={"hotel": 1} if saga % 3 == 0 else {},
        lose_reply="flight" if saga % 5 == 0 else "",
        delay=0.03,
    )


async def run(cluster: Cluster, sagas: int) -> None:
    for saga in range(sagas):
        await cluster.get(Trip, str(saga)).start(plan(saga))
        if saga == 0:
            print("started", flush=True)
        await asyncio.sleep(0.02)  # (pacing: sagas start over time, so kills land everywhere)
    await asyncio.Event().wait()  # until killed


async def finish(cluster: Cluster, sagas: int) -> None:
    known = await Trip.list_sagas(cluster)
    for saga in range(sagas):
        if str(saga) not in known:
            await cluster.get(Trip, str(saga)).start(plan(saga))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:
        listed = await Trip.list_sagas(cluster)
        live = [k for k, p in listed.items() if p in (SagaPhase.RUNNING, SagaPhase.COMPENSATING)]
        if len(listed) == sagas and not live:
            break
        if loop.time() > deadline:
            raise SystemExit(f"sagas still live after 60 s: {sorted(live)}; listed {listed}")
        await asyncio.sleep(0.05)
    for saga in range(sagas):
        status = await cluster.get(Trip, str(saga)).status()
        print(saga, status.phase.value, flush=True)


async def main(db: str, sagas: int, mode: str) -> None:
    storage = SqliteStorage(db, durability="normal")
    async with Cluster.local(actors=ACTORS, silos=2, storage=storage, **SETTINGS) as cluster:  # type: ignore[arg-type]
        await (run if mode == "run" else finish)(cluster, sagas)
    await storage.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
