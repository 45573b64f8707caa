"""Event sourcing across real process crashes: a child process (tests/es_crash_app.py) deposits
through event-sourced actors while its projections run, and is SIGKILLed at a random moment,
again and again on the same SQLite file. No acknowledged event may be lost, and the read models,
once caught up, must equal a fold of the whole log: no event applied twice, none skipped; that
holds too for ``Ledger``, whose read model is a table of its own on the file, written through
the store's connection in the transaction that commits its offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import sys
from pathlib import Path

from raygrain.runtime import Cluster
from raygrain.storage import SqliteStorage
from tests.events_app import CRASH_ACTORS, Account, Balances, Ledger, Totals

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 10
ACCOUNTS = 20
MAX_KILL_DELAY = 0.25  # seconds after the first acknowledgement of a round
FIRST_ACK_TIMEOUT = 60.0
CATEGORY = Account.__actor_options__.name


async def _round(db: Path, stderr: Path, acked: dict[int, int], rng: random.Random) -> int:
    """One child, killed after its first acknowledgement plus a random delay; returns the
    number of acknowledgements it printed."""
    with stderr.open("wb") as stderr_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.es_crash_app", str(db), str(ACCOUNTS),
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=stderr_file,
        )  # fmt: skip
    first = asyncio.Event()
    count = 0

    async def read_acks() -> None:
        nonlocal count
        assert process.stdout is not None
        async for line in process.stdout:
            if line.endswith(b"\n"):  # a line cut short by the kill acknowledged nothing
                key, version = map(int, line.split())
                acked[key] = max(acked.get(key, 0), version)
                count += 1
                first.set()

    reader = asyncio.create_task(read_acks())
    try:
        exited = asyncio.create_task(process.wait())
        await asyncio.wait(
            {asyncio.create_task(first.wait()), exited},
            timeout=FIRST_ACK_TIMEOUT,
            return_when=asyncio.FIRST_COMPLETED,
        )
        assert first.is_set(), f"the child acknowledged nothing:\n{stderr.read_text()}"
        # The point of the test: die at an arbitrary moment while appends are in flight.
        await asyncio.sleep(rng.uniform(0.0, MAX_KILL_DELAY))
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        await reader  # the pipe still holds every line printed before the kill
    return count


async def test_acknowledged_events_survive_sigkill_and_projections_apply_each_once(
    tmp_path: Path,
) -> None:
    db = tmp_path / "es.db"
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    acked: dict[int, int] = {}
    for number in range(1, ROUNDS + 1):
        count = await _round(db, tmp_path / "child.stderr", acked, rng)
        assert count > 0, f"round {number} (seed {seed}): nothing acknowledged"

    async with SqliteStorage(db) as storage:
        versions = {}
        for key in range(ACCOUNTS):
            stream = await storage.read_stream(f"{CATEGORY}/k{key}")
            versions[key] = len(stream)
            assert [e.version for e in stream] == list(range(1, len(stream) + 1))
            assert len(stream) >= acked.get(key, 0), f"seed {seed}: account {key} lost events"
        head = await storage.head(CATEGORY)
        assert head == sum(versions.values())
        async with Cluster.local(actors=CRASH_ACTORS, silos=2, storage=storage) as cluster:
            token = {CATEGORY: head}
            for key in range(ACCOUNTS):
                assert await cluster.get(Account, f"k{key}").balance() == versions[key]
                row = (await Balances.of(cluster).read(f"k{key}", token)).value
                expected = {"balance": versions[key], "events": versions[key]}
                assert (row or {"balance": 0, "events": 0}) == expected, f"seed {seed}: k{key}"
            total = (await Totals.of(cluster).read("deposits", token)).value
            assert total == head, f"seed {seed}: the deposits read model counted {total}"
            # The read model in the user's own table, written through the store's connection
            # in the transaction of its offsets: each event in it exactly once.
            await Ledger.of(cluster).caught_up(token)
            with sqlite3.connect(db) as connection:
                found = connection.execute("SELECT account, balance, events FROM ledger")
                ledger = {account: (balance, events) for account, balance, events in found}
            expected_ledger = {f"k{k}": (v, v) for k, v in versions.items() if v}
            assert ledger == expected_ledger, f"seed {seed}: the ledger table"
