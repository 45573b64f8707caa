"""Acknowledged means durable, across real process crashes.

A child process (tests/crash_app.py) runs a local cluster on a SQLite file and prints a line for
every acknowledged write; this test SIGKILLs it at a random moment while writes are in flight,
reopens the file and checks that every acknowledged write is there and that nothing is
half-applied. Each round reuses the file, so the child carries on where the last one died.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from actors import ActorId, decode, decode_state
from runtime import Cluster
from storage import SqliteStorage
from tests.crash_app import Depositor, Deposits, pair_ids

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 24
ACCOUNTS = 100
PAIRS = 8
MAX_KILL_DELAY = 0.3  # seconds after the first acknowledgement of a round
FIRST_ACK_TIMEOUT = 60.0


@dataclass
class Acknowledged:
    """The highest acknowledged sequence number per account and per pair, over every round."""

    deposits: dict[int, int] = field(default_factory=dict)
    pairs: dict[int, int] = field(default_factory=dict)
    count: int = 0

    def add(self, line: bytes) -> None:
        kind, key, seq = line.split()
        acked = self.deposits if kind == b"d" else self.pairs
        acked[int(key)] = max(acked.get(int(key), 0), int(seq))
        self.count += 1


@dataclass
class Child:
    process: asyncio.subprocess.Process
    first_ack: asyncio.Event
    reader: asyncio.Task[None]


async def _start_child(db: Path, acknowledged: Acknowledged) -> Child:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.crash_app",
        str(db),
        str(ACCOUNTS),
        str(PAIRS),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    first_ack = asyncio.Event()

    async def read_acks() -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            # A line cut short by the kill was never a complete acknowledgement.
            if line.endswith(b"\n"):
                acknowledged.add(line)
                first_ack.set()

    return Child(process, first_ack, asyncio.create_task(read_acks()))


async def _wait_for_first_ack(child: Child, round_number: int) -> None:
    waiting = asyncio.create_task(child.first_ack.wait())
    exited = asyncio.create_task(child.process.wait())
    done, _ = await asyncio.wait(
        {waiting, exited}, timeout=FIRST_ACK_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
    )
    for task in (waiting, exited):
        task.cancel()
    await asyncio.gather(waiting, exited, return_exceptions=True)
    if waiting not in done or not waiting.result():
        assert child.process.stderr is not None
        stderr = b"" if child.process.returncode is None else await child.process.stderr.read()
        pytest.fail(
            f"round {round_number}: the child acknowledged no write within {FIRST_ACK_TIMEOUT}s "
            f"(exit code {child.process.returncode}); stderr:\n{stderr.decode(errors='replace')}"
        )


async def _kill(child: Child) -> None:
    if child.process.returncode is None:
        child.process.kill()
    await child.process.wait()
    # The pipe still holds every line printed before the kill: read them to the end.
    await child.reader
    assert child.process.stderr is not None
    await child.process.stderr.read()


async def _check_file(db: Path, acknowledged: Acknowledged, where: str) -> int:
    """Check the file against the acknowledgements; return how many writes committed without
    being acknowledged (the kill fell between commit and reply)."""
    unacknowledged = 0
    async with SqliteStorage(db) as storage:
        for key in range(ACCOUNTS):
            record = await storage.read(_account_id(key))
            state = Deposits() if record.data is None else decode_state(record.data, Deposits)
            count, acked = len(state.seqs), acknowledged.deposits.get(key, 0)
            assert state.seqs == list(range(1, count + 1)), f"{where}: account {key} has a gap"
            assert state.balance == sum(state.seqs), f"{where}: account {key} is half-applied"
            # One write at a time per account: at most the one in flight at the kill is extra.
            assert acked <= count <= acked + 1, (
                f"{where}: account {key} holds deposits 1..{count}, acknowledged 1..{acked}"
            )
            unacknowledged += count - acked
        for pair in range(PAIRS):
            records = [await storage.read(actor) for actor in pair_ids(pair)]
            seqs = [0 if r.data is None else int(decode(r.data)["seq"]) for r in records]
            acked = acknowledged.pairs.get(pair, 0)
            assert seqs[0] == seqs[1], f"{where}: pair {pair} is half-written: {seqs}"
            assert acked <= seqs[0] <= acked + 1, (
                f"{where}: pair {pair} holds write {seqs[0]}, acknowledged up to {acked}"
            )
            unacknowledged += seqs[0] - acked
    return unacknowledged


def _account_id(key: int) -> ActorId:
    return ActorId(Depositor.__actor_options__.name, key)


@pytest.mark.slow
async def test_acknowledged_writes_survive_repeated_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    acknowledged = Acknowledged()
    committed_unacknowledged = 0
    child: Child | None = None
    try:
        for round_number in range(1, ROUNDS + 1):
            where = f"round {round_number} (seed {seed})"
            before = acknowledged.count
            child = await _start_child(db, acknowledged)
            await _wait_for_first_ack(child, round_number)
            # The point of the test: die at an arbitrary moment while writes are in flight.
            await asyncio.sleep(rng.uniform(0.0, MAX_KILL_DELAY))
            await _kill(child)
            child = None
            assert acknowledged.count > before, f"{where}: no write acknowledged"
            committed_unacknowledged += await _check_file(db, acknowledged, where)
    finally:
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
            await child.process.wait()
            child.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await child.reader

    # Finally the file through a fresh cluster: every account is readable and consistent.
    async with Cluster.local(actors=[Depositor], silos=2, storage=f"sqlite:///{db}") as cluster:
        for key in range(ACCOUNTS):
            state = await cluster.get(Depositor, key).snapshot()
            assert len(state.seqs) >= acknowledged.deposits.get(key, 0)
            assert state.balance == sum(state.seqs)
    print(
        f"{ROUNDS} kills, {acknowledged.count} acknowledged writes, "
        f"{committed_unacknowledged} committed but unacknowledged at a kill (seed {seed})"
    )
