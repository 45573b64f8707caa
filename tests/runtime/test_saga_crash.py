"""Sagas survive real process crashes: every saga ends completed or fully compensated, and no
step acts twice, checked on the participants' state in the SQLite file.

A child process (tests/saga_crash_app.py) runs 24 sagas on a SQLite file; this test SIGKILLs
it at a random moment, several times, so that kills land before, during and after steps and
compensations (and between a step's effect and the commit of the saga's progress). A last run
calls no saga: the saga index's reminders wake the live ones, and it waits until none is live.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
from pathlib import Path

from raygrain.actors import ActorId, decode_state
from raygrain.runtime.sagas._record import SagaRecord
from raygrain.storage import SqliteStorage
from tests.saga_app import STEPS, Books
from tests.saga_crash_app import plan

ROOT = Path(__file__).resolve().parents[2]
SAGAS = 24
KILLS = 6
MAX_KILLS = 20
MAX_KILL_DELAY = 0.6


async def _child(db: Path, mode: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.saga_crash_app",
        str(db),
        str(SAGAS),
        mode,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _run_and_kill(db: Path, delay: float) -> None:
    child = await _child(db, "run")
    assert child.stdout is not None and child.stderr is not None
    try:
        first = await asyncio.wait_for(child.stdout.readline(), 60)
        assert first == b"started\n", (await child.stderr.read()).decode()[-3000:]
        await asyncio.sleep(delay)  # (the kill's random moment, not an ordering of events)
    finally:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.communicate()


async def _acted_unrecorded(db: Path) -> int:
    """Steps the file shows applied on a ledger but not recorded by their saga: the kill fell
    between a step's effect and the commit of the saga's progress."""
    storage = SqliteStorage(str(db))
    found = 0
    try:
        for saga in range(SAGAS):
            ledger = await storage.read(ActorId("sagatest.Ledger", str(saga)))
            stored = await storage.read(ActorId("sagatest.Trip", str(saga)))
            if ledger.data is None or stored.data is None:
                continue
            books = decode_state(ledger.data, Books, "ledger")
            record = decode_state(stored.data, SagaRecord, "saga")
            if record.phase == "running":
                found += len({e[3:] for e in books.events if e[:3] == "do "} - set(record.results))
    finally:
        await storage.aclose()
    return found


async def test_sagas_killed_at_random_points_end_completed_or_compensated_acting_once(
    tmp_path: Path,
) -> None:
    db = tmp_path / "sagas.db"
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    acted_unrecorded = 0
    kills = 0
    # At least KILLS kills, and more (up to MAX_KILLS) until one has fallen between a step's
    # effect and its record: where each kill falls depends on the machine's speed.
    while kills < KILLS or (not acted_unrecorded and kills < MAX_KILLS):
        await _run_and_kill(db, rng.uniform(0, MAX_KILL_DELAY))
        acted_unrecorded += await _acted_unrecorded(db)
        kills += 1
    child = await _child(db, "finish")
    out, err = await asyncio.wait_for(child.communicate(), 120)
    assert child.returncode == 0, f"seed {seed}: {err.decode()[-3000:]}"
    phases = dict(line.split() for line in out.decode().splitlines())
    storage = SqliteStorage(str(db))
    try:
        for saga in range(SAGAS):
            where = f"saga {saga} (seed {seed})"
            ledger = await storage.read(ActorId("sagatest.Ledger", str(saga)))
            books = decode_state(ledger.data, Books, "ledger") if ledger.data else Books()
            stored = await storage.read(ActorId("sagatest.Trip", str(saga)))
            assert stored.data is not None, where
            record = decode_state(stored.data, SagaRecord, "saga")
            assert record.phase == phases[str(saga)], where
            for name in STEPS:  # no step acted twice, whatever the kills did
                assert books.events.count(f"do {name}") <= 1, f"{where}: {books.events}"
            if plan(saga).fail:
                assert record.phase == "compensated", f"{where}: {record}"
                assert books.booked == {}, f"{where}: orphan bookings {books.booked}"
            else:
                assert record.phase == "completed", f"{where}: {record}"
                assert sorted(books.booked) == sorted(STEPS), where
                assert not [e for e in books.events if e.startswith("undo")], where
    finally:
        await storage.aclose()
    print(
        f"\n{kills} kills, {SAGAS} sagas all ended as planned; {acted_unrecorded} steps had "
        f"acted but were not yet recorded by their saga when killed (seed {seed})"
    )
    assert acted_unrecorded > 0, f"no kill fell between a step's effect and its record ({seed})"
