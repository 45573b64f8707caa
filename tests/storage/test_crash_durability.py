"""Acknowledged means durable, across real process crashes.

A child process (tests/crash_app.py) runs a local cluster on a SQLite file (or a PostgreSQL
database) and prints a line for every acknowledged write; this test SIGKILLs it at a random moment
while writes are in flight, reopens the store and checks that every acknowledged write is there
and that nothing is half-applied. Each round reuses the store, so the child carries on where the
last one died.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from raygrain.actors import ActorId, decode, decode_state
from raygrain.runtime import Cluster
from tests.crash_app import Depositor, Deposits, open_store, pair_ids

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 24
ACCOUNTS = 100
PAIRS = 8
MAX_KILL_DELAY = 0.3  # seconds after the first acknowledgement of a round
FIRST_ACK_TIMEOUT = 60.0


@dataclass
class Ledger:
    """What the parent knows per writer ((kind, key): "d" for an account, "p" for a pair): the
    highest sequence number acknowledged over every round, and the one the file held at the
    last check."""

    acked: dict[tuple[str, int], int] = field(default_factory=dict)
    found: dict[tuple[str, int], int] = field(default_factory=dict)
    count: int = 0

    def acknowledge(self, line: bytes) -> None:
        kind, key, seq = line.decode().split()
        writer = (kind, int(key))
        self.acked[writer] = max(self.acked.get(writer, 0), int(seq))
        self.count += 1

    def check(self, writer: tuple[str, int], stored: int, where: str) -> int:
        """Check the file's sequence number for ``writer``; return 1 if it holds a write from
        this round that was never acknowledged (the kill fell between commit and reply)."""
        acked, before = self.acked.get(writer, 0), self.found.get(writer, 0)
        assert stored >= acked, f"{where}: {writer} lost writes {stored + 1}..{acked}"
        assert stored >= before, f"{where}: {writer} went back from {before} to {stored}"
        # Each writer has one write in flight at a time and starts from what the file holds,
        # so a kill leaves at most one write beyond both.
        assert stored <= max(acked, before) + 1, (
            f"{where}: {writer} holds {stored}, acknowledged {acked}, held {before} before"
        )
        self.found[writer] = stored
        return stored - max(acked, before)


@dataclass
class Child:
    process: asyncio.subprocess.Process
    first_ack: asyncio.Event
    reader: asyncio.Task[None]
    stderr: Path


async def _start_child(db: str, stderr: Path, ledger: Ledger) -> Child:
    # stderr goes to a file: a pipe nobody reads could fill up and stall the child.
    with stderr.open("wb") as stderr_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.crash_app",
            db,
            str(ACCOUNTS),
            str(PAIRS),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr_file,
        )
    first_ack = asyncio.Event()

    async def read_acks() -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            # A line cut short by the kill was never a complete acknowledgement.
            if line.endswith(b"\n"):
                ledger.acknowledge(line)
                first_ack.set()

    return Child(process, first_ack, asyncio.create_task(read_acks()), stderr)


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
        pytest.fail(
            f"round {round_number}: the child exited or acknowledged no write within "
            f"{FIRST_ACK_TIMEOUT}s (exit code {child.process.returncode}); stderr:\n"
            f"{child.stderr.read_text(errors='replace')}"
        )


async def _kill(child: Child) -> None:
    if child.process.returncode is None:
        child.process.kill()
    await child.process.wait()
    # The pipe still holds every line printed before the kill: read them to the end.
    await child.reader


async def _until_the_servers_sessions_of_the_dead_are_gone(db: str) -> None:
    """(PostgreSQL) A statement the killed child had sent runs on in its server session and may
    still commit (a committed, unacknowledged write: allowed); wait until those sessions end, so
    that the check reads the store as the dead child left it, not half-way through."""
    if not db.startswith("postgresql:"):
        return
    import asyncpg

    connection = await asyncpg.connect(db.split("?", 1)[0])
    try:
        for _ in range(600):
            others = await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                " AND datname = current_database() AND pid <> pg_backend_pid()"
            )
            if others == 0:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{others} server sessions of the killed child lived on for 30 s")
    finally:
        await connection.close()


async def _check_file(db: str, ledger: Ledger, where: str) -> int:
    """Check the store against the acknowledgements; return how many writes the last child
    committed and never acknowledged."""
    unacknowledged = 0
    storage = open_store(db)
    try:
        for key in range(ACCOUNTS):
            record = await storage.read(_account_id(key))
            state = Deposits() if record.data is None else decode_state(record.data, Deposits)
            count = len(state.seqs)
            assert state.seqs == list(range(1, count + 1)), f"{where}: account {key} has a gap"
            assert state.balance == sum(state.seqs), f"{where}: account {key} is half-applied"
            unacknowledged += ledger.check(("d", key), count, where)
        for pair in range(PAIRS):
            records = [await storage.read(actor) for actor in pair_ids(pair)]
            seqs = [0 if r.data is None else int(decode(r.data)["seq"]) for r in records]
            assert seqs[0] == seqs[1], f"{where}: pair {pair} is half-written: {seqs}"
            unacknowledged += ledger.check(("p", pair), seqs[0], where)
    finally:
        await storage.aclose()
    return unacknowledged


def _account_id(key: int) -> ActorId:
    return ActorId(Depositor.__actor_options__.name, key)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where the child keeps its state: a SQLite file, or a real PostgreSQL server's schema."""
    if request.param == "sqlite":
        return str(tmp_path / "crash.db")
    return str(request.getfixturevalue("postgres_url"))


@pytest.mark.slow
async def test_acknowledged_writes_survive_repeated_sigkill(store: str, tmp_path: Path) -> None:
    db = store
    stderr = tmp_path / "child.stderr"
    seed = random.randrange(2**32)  # a new seed per run, named in every failure message
    rng = random.Random(seed)
    ledger = Ledger()
    committed_unacknowledged = 0
    child: Child | None = None
    try:
        for round_number in range(1, ROUNDS + 1):
            where = f"round {round_number} (seed {seed})"
            before = ledger.count
            child = await _start_child(db, stderr, ledger)
            await _wait_for_first_ack(child, round_number)
            # The point of the test: die at an arbitrary moment while writes are in flight.
            await asyncio.sleep(rng.uniform(0.0, MAX_KILL_DELAY))
            await _kill(child)
            child = None
            await _until_the_servers_sessions_of_the_dead_are_gone(db)
            assert ledger.count > before, f"{where}: no write acknowledged"
            committed_unacknowledged += await _check_file(db, ledger, where)
    finally:
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
            await child.process.wait()
            child.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await child.reader

    # Finally the file through a fresh cluster: every account is readable and consistent.
    final = open_store(db)
    try:
        async with Cluster.local(actors=[Depositor], silos=2, storage=final) as cluster:
            for key in range(ACCOUNTS):
                state = await cluster.get(Depositor, key).snapshot()
                count = ledger.found[("d", key)]
                assert state == Deposits(sum(range(1, count + 1)), list(range(1, count + 1)))
    finally:
        await final.aclose()
    print(
        f"{ROUNDS} kills, {ledger.count} acknowledged writes, "
        f"{committed_unacknowledged} committed but unacknowledged when killed (seed {seed})"
    )
    # The run proved something only if some kill fell between a commit and its reply (the
    # moment an fsync-less or reply-before-commit build would lose a write).
    assert committed_unacknowledged > 0, f"no kill landed between commit and reply (seed {seed})"
