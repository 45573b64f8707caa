"""Transactions are all-or-nothing across real process crashes.

A child process (tests/tx_crash_app.py) runs transfers between SQLite-backed accounts on a
three-silo local cluster, with the client or a silo coordinating; this test SIGKILLs it at a
random moment, many times, so that kills land in every phase of the commit (calls, prepare, the
storage write, the commit messages). After every kill it reads the file: money is conserved,
every transfer is in both of its accounts or in neither, and every acknowledged one is there.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
from collections import Counter
from pathlib import Path

from raygrain.actors import ActorId, decode_state, encode_state
from raygrain.storage import SqliteStorage, StateWrite
from tests.app import Ledger

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 12
ACCOUNTS = 6  # few accounts: transfers conflict, so aborts and lock waits happen too
WORKERS = 8
START = 1000
MAX_KILL_DELAY = 0.4
FIRST_ACK_TIMEOUT = 60.0


def _vault(i: int) -> ActorId:
    return ActorId("test.Vault", str(i))


async def _run_and_kill(db: Path, round_: int, rng: random.Random) -> list[tuple[int, ...]]:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.tx_crash_app",
        str(db),
        str(ACCOUNTS),
        str(WORKERS),
        str(round_),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None and child.stderr is not None
    acked: list[tuple[int, ...]] = []
    try:
        first = await asyncio.wait_for(child.stdout.readline(), FIRST_ACK_TIMEOUT)
        assert first, f"child ended early: {(await child.stderr.read()).decode()[-2000:]}"
        acked.append(tuple(int(x) for x in first.split()[1:]))
        await asyncio.sleep(rng.uniform(0, MAX_KILL_DELAY))
    finally:
        with contextlib.suppress(ProcessLookupError):
            child.kill()  # SIGKILL: no cleanup, mid-commit
        rest, _ = await child.communicate()
    acked += [tuple(int(x) for x in line.split()[1:]) for line in rest.splitlines() if line]
    return acked


async def test_killed_mid_commit_every_transfer_is_all_or_nothing(tmp_path: Path) -> None:
    db = tmp_path / "bank.db"
    storage = SqliteStorage(str(db))
    await storage.write_many(
        [StateWrite(_vault(i), encode_state(Ledger(START, [])), None) for i in range(ACCOUNTS)]
    )
    await storage.aclose()
    rng = random.Random(5)
    acknowledged: dict[int, tuple[int, int, int]] = {}
    for round_ in range(1, ROUNDS + 1):
        for transfer, src, dst, amount in await _run_and_kill(db, round_, rng):
            acknowledged[transfer] = (src, dst, amount)
        storage = SqliteStorage(str(db))
        try:
            records = [await storage.read(_vault(i)) for i in range(ACCOUNTS)]
        finally:
            await storage.aclose()
        ledgers = [decode_state(r.data, Ledger, "vault") for r in records if r.data]
        where = f"after kill {round_}"
        assert len(ledgers) == ACCOUNTS
        assert sum(x.balance for x in ledgers) == START * ACCOUNTS, f"{where}: money changed"
        seen = Counter(t for x in ledgers for t in x.applied)
        halves = sorted(t for t, n in seen.items() if n != 2)
        assert not halves, f"{where}: transfers applied on one side only: {halves[:5]}"
        for transfer, (src, dst, _) in acknowledged.items():
            assert transfer in ledgers[src].applied and transfer in ledgers[dst].applied, (
                f"{where}: acknowledged transfer {transfer} lost"
            )
        assert all(x.balance >= 0 for x in ledgers), f"{where}: an account overdrawn"
    print(f"\n{ROUNDS} kills, {len(acknowledged)} acknowledged transfers, all intact")
    assert len(acknowledged) >= ROUNDS  # every round committed something before its kill
