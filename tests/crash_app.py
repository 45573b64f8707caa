"""The child process of tests/storage/test_crash_durability.py: acknowledged writes until killed.

    python -m tests.crash_app DB_PATH ACCOUNTS PAIRS

Runs a two-silo local cluster on a SQLite file (fsync durability) and, concurrently:
- one writer per ``Depositor`` account, each depositing the next sequence number in a loop
  through the actor (a per-turn commit);
- one writer per record pair, writing the next sequence number to both records of the pair in
  one ``write_many`` (an atomic multi-record write), straight on the cluster's provider.

Each writer continues from what the file holds, so successive runs on one file carry on where the
last one was killed. After each acknowledged write, and before anything else, it prints
``d KEY SEQ`` or ``p PAIR SEQ`` and flushes: a line on stdout means the write was acknowledged.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field

from raygrain.actors import Actor, ActorId, decode, encode, read_only
from raygrain.runtime import Cluster
from raygrain.storage import SqliteStorage, StateWrite

PAIR_TYPE = "crash.Pair"


@dataclass
class Deposits:
    """One record holding two views of the same deposits, so that a half-applied one shows:
    ``seqs`` must be exactly 1..n and ``balance`` their sum."""

    balance: int = 0
    seqs: list[int] = field(default_factory=list)


class Depositor(Actor[Deposits], name="crash.Depositor"):
    async def deposit(self, seq: int) -> int:
        if seq != len(self.state.seqs) + 1:
            raise ValueError(
                f"{self.context.key}: deposit {seq} out of order after {self.state.seqs[-1:]}"
            )
        self.state.seqs.append(seq)
        self.state.balance += seq
        return seq

    @read_only
    async def last(self) -> int:
        return len(self.state.seqs)

    @read_only
    async def snapshot(self) -> Deposits:
        return self.state


def pair_ids(pair: int) -> tuple[ActorId, ActorId]:
    return ActorId(PAIR_TYPE, f"{pair}-a"), ActorId(PAIR_TYPE, f"{pair}-b")


def acknowledge(kind: str, key: int, seq: int) -> None:
    sys.stdout.write(f"{kind} {key} {seq}\n")
    sys.stdout.flush()


async def deposit_forever(cluster: Cluster, key: int) -> None:
    account = cluster.get(Depositor, key)
    seq = await account.last()
    while True:
        seq += 1
        await account.deposit(seq)
        acknowledge("d", key, seq)


async def write_pair_forever(storage: SqliteStorage, pair: int) -> None:
    first, second = pair_ids(pair)
    records = [await storage.read(first), await storage.read(second)]
    etags: list[str | None] = [record.etag for record in records]
    seq = 0 if records[0].data is None else int(decode(records[0].data)["seq"])
    while True:
        seq += 1
        data = encode({"seq": seq})
        etags = list(
            await storage.write_many(
                [StateWrite(first, data, etags[0]), StateWrite(second, data, etags[1])]
            )
        )
        acknowledge("p", pair, seq)


async def main(path: str, accounts: int, pairs: int) -> None:
    storage = SqliteStorage(path, durability="fsync")
    async with Cluster.local(actors=[Depositor], silos=2, storage=storage) as cluster:
        # Runs until killed; a failure ends the process with its traceback on stderr.
        await asyncio.gather(
            *(deposit_forever(cluster, key) for key in range(accounts)),
            *(write_pair_forever(storage, pair) for pair in range(pairs)),
        )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
