"""The child process of tests/runtime/test_transaction_crash.py: transfers until killed.

    python -m tests.tx_crash_app DB_PATH ACCOUNTS WORKERS ROUND

Runs a three-silo local cluster on a SQLite file and, in ``WORKERS`` concurrent loops, moves
random amounts between random ``Vault`` accounts, alternating a client transaction block (the
client coordinates) with ``Vault.transfer_to`` (a silo coordinates). After each committed
transfer, and before anything else, it prints ``c ID SRC DST AMOUNT`` and flushes: a line on
stdout means the transfer was acknowledged as committed. Transfer ids are unique across rounds.
"""

from __future__ import annotations

import asyncio
import random
import sys

from raygrain.actors import TransactionAbortedError
from raygrain.runtime import Cluster
from tests.app import InsufficientFunds, Vault


async def main(db: str, accounts: int, workers: int, round_: int) -> None:
    async with Cluster.local(actors=[Vault], silos=3, storage=f"sqlite:///{db}") as cluster:
        vaults = [cluster.get(Vault, str(i)) for i in range(accounts)]

        async def worker(w: int) -> None:
            rng = random.Random(round_ * 1000 + w)
            for n in range(1, 10**6):
                transfer = (round_ * 100 + w) * 10**6 + n
                src, dst = rng.sample(range(accounts), 2)
                amount = rng.randint(1, 60)

                async def block() -> None:
                    await vaults[src].add(transfer, -amount)  # noqa: B023  # run at once
                    await vaults[dst].add(transfer, amount)  # noqa: B023

                try:
                    if n % 2:
                        await cluster.transact(block, retries=5)
                    else:
                        await vaults[src].transfer_to(str(dst), transfer, amount)
                except (TransactionAbortedError, InsufficientFunds):
                    continue
                sys.stdout.write(f"c {transfer} {src} {dst} {amount}\n")
                sys.stdout.flush()

        await asyncio.gather(*(worker(w) for w in range(workers)))


if __name__ == "__main__":
    path, count, writers, round_number = sys.argv[1:5]
    asyncio.run(main(path, int(count), int(writers), int(round_number)))
