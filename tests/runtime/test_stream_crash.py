"""Durable streams across real process crashes: SIGKILL mid-stream, again and again.

A child process (tests/stream_crash_app.py) publishes to a few durable streams whose implicit
consumers fold every event into their state; this test kills it (SIGKILL, no cleanup) after a
random number of acknowledged publishes, many times in a row on one SQLite file, so that kills
land between the append and the fan-out, inside consumer turns and inside their commits. After
every kill it reads the file: no event was applied twice to a consumer's state, and each
consumer applied a gap-free prefix of its stream. A last run publishes the rest and waits for
the consumers, which must then hold every acknowledged event exactly once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
from pathlib import Path

from raygrain.actors import ActorId, decode_state
from raygrain.storage import SqliteStorage
from tests.stream_app import Tally

ROOT = Path(__file__).resolve().parents[2]
KILLS = 10
STREAMS = 3
TOTAL = 60  # events per stream
FIRST_ACK_TIMEOUT = 60.0
CONSUMERS = ("test.streams.OrderConsumer", "test.streams.OrderAuditor")


async def _run(db: Path, starts: list[int], acks_before_kill: int | None) -> list[tuple[str, int]]:
    """Run the child until ``acks_before_kill`` more publishes were acknowledged, then kill it
    (None: let it finish). Returns the acknowledged (stream key, number) pairs."""
    args = [str(db), str(STREAMS), ",".join(map(str, starts)), str(TOTAL)]
    if acks_before_kill is None:
        args.append("finish")
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.stream_crash_app",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None and child.stderr is not None
    acked: list[tuple[str, int]] = []
    try:
        while True:
            line = await asyncio.wait_for(child.stdout.readline(), FIRST_ACK_TIMEOUT)
            if not line or line.strip() == b"done":
                break
            _, key, n = line.split()
            acked.append((key.decode(), int(n)))
            if acks_before_kill is not None and len(acked) >= acks_before_kill:
                break
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            child.kill()  # a hang (or a failed read): do not leave the child behind
        raise
    finally:
        if acks_before_kill is not None:
            with contextlib.suppress(ProcessLookupError):
                child.kill()  # SIGKILL: mid-publish, mid-turn, mid-commit
        rest, errors = await child.communicate()
    acked += [(k.decode(), int(n)) for k, n in (line.split()[1:] for line in rest.splitlines())]
    if acks_before_kill is None:
        assert child.returncode == 0, f"the last run failed: {errors.decode()[-3000:]}"
    return acked


async def _states(db: Path) -> dict[tuple[str, str], Tally]:
    storage = SqliteStorage(str(db))
    try:
        found = {}
        for type_name in CONSUMERS:
            for i in range(STREAMS):
                record = await storage.read(ActorId(type_name, f"k{i}"))
                if record.data is not None:
                    found[(type_name, f"k{i}")] = decode_state(record.data, Tally, type_name)
        return found
    finally:
        await storage.aclose()


def _check(states: dict[tuple[str, str], Tally], where: str) -> None:
    for (type_name, key), tally in states.items():
        numbers = [s[3] for s in tally.seen]
        assert numbers == list(range(1, len(numbers) + 1)), f"{type_name} {key} {where}: {numbers}"
        assert set(tally.applied.values()) <= {1}, f"{type_name} {key} applied twice {where}"


async def test_killed_mid_stream_every_acknowledged_event_is_consumed_once(
    tmp_path: Path,
) -> None:
    db = tmp_path / "streams.db"
    seed = random.randrange(2**32)  # a new seed per run, named in every failure message
    rng = random.Random(seed)
    acknowledged: set[tuple[str, int]] = set()
    starts = [1] * STREAMS
    for kill in range(1, KILLS + 1):
        for key, n in await _run(db, starts, rng.randint(1, 12)):
            acknowledged.add((key, n))
        starts = [
            max([n for k, n in acknowledged if k == f"k{i}"] or [0]) + 1 for i in range(STREAMS)
        ]
        _check(await _states(db), f"after kill {kill} (seed {seed})")
    # The rest, killed at its last acknowledgement (its consumers are likely behind), then a
    # run that publishes nothing: only the log (the sweeper) can bring the consumers up.
    remaining = sum(TOTAL + 1 - start for start in starts)
    for key, n in await _run(db, starts, remaining):
        acknowledged.add((key, n))
    assert len(acknowledged) == STREAMS * TOTAL
    await _run(db, [TOTAL + 1] * STREAMS, None)
    states = await _states(db)
    _check(states, f"after the last run (seed {seed})")
    assert len(states) == len(CONSUMERS) * STREAMS
    for (type_name, key), tally in states.items():
        consumed = {s[3] for s in tally.seen}
        missing = {n for k, n in acknowledged if k == key} - consumed
        assert not missing, f"{type_name} {key}: acknowledged but never consumed: {missing}"
        assert len(tally.seen) == TOTAL
    print(
        f"\n{KILLS} kills, {len(acknowledged)} acknowledged events, "
        f"each consumed once (seed {seed})"
    )
