"""The child process of tests/runtime/test_event_crash.py: event-sourced deposits until killed.

    python -m tests.es_crash_app DB_PATH ACCOUNTS

Runs a two-silo local cluster on a SQLite file (fsync) with the ``Account`` event-sourced actor
and its three projections (tests/events_app.py; ``Ledger`` in a table of its own). One writer
per account deposits 1 in a loop through the actor; after each acknowledged deposit, and
before anything else, it prints ``KEY VERSION`` and flushes: a line on stdout means that event
was acknowledged. The projections run meanwhile, committing their offsets with their rows,
and die with the process.
"""

from __future__ import annotations

import asyncio
import sys

from raygrain.runtime import Cluster
from raygrain.storage import SqliteStorage
from tests.events_app import CRASH_ACTORS, Account


async def deposit_forever(cluster: Cluster, key: int) -> None:
    account = cluster.get(Account, f"k{key}")
    while True:
        written = await account.deposit(1)
        assert written is not None
        sys.stdout.write(f"{key} {written.version}\n")
        sys.stdout.flush()


async def main(path: str, accounts: int) -> None:
    storage = SqliteStorage(path, durability="fsync")
    async with Cluster.local(actors=CRASH_ACTORS, silos=2, storage=storage) as cluster:
        await asyncio.gather(*(deposit_forever(cluster, key) for key in range(accounts)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
