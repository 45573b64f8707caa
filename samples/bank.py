"""A bank of account actors spread over several silos, on the embedded SQLite store.

Many concurrent clients deposit and withdraw at random; overdrafts are refused by the account
itself (the user's own exception reaches the caller, and the refused turn leaves no trace).
At the end the sum of all balances is checked against the sum of acknowledged operations.

    python -m samples.bank [--accounts 200] [--operations 5000] [--db bank.db]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from dataclasses import dataclass, field

from actors import Actor, read_only
from runtime import Cluster


@dataclass
class Account:
    balance: int = 0
    operations: int = 0
    history: list[int] = field(default_factory=list)


class InsufficientFunds(Exception):
    """Raised by an account asked to go below zero."""


class BankAccount(Actor[Account], name="samples.BankAccount"):
    async def deposit(self, amount: int) -> int:
        if amount <= 0:
            raise ValueError(f"deposit must be positive, got {amount}")
        self.state.balance += amount
        self.state.operations += 1
        self.state.history = [*self.state.history[-9:], amount]
        return self.state.balance

    async def withdraw(self, amount: int) -> int:
        if amount <= 0:
            raise ValueError(f"withdrawal must be positive, got {amount}")
        # Change first, then check: the rollback on raise is what keeps this honest.
        self.state.balance -= amount
        self.state.operations += 1
        if self.state.balance < 0:
            raise InsufficientFunds(f"account {self.key}: cannot withdraw {amount}")
        self.state.history = [*self.state.history[-9:], -amount]
        return self.state.balance

    @read_only
    async def balance(self) -> int:
        return self.state.balance


async def run(accounts: int, operations: int, db_path: str) -> None:
    rng = random.Random(42)
    async with Cluster.local(actors=[BankAccount], silos=3, storage=f"sqlite:///{db_path}") as bank:
        refs = [bank.get(BankAccount, f"acct-{i}") for i in range(accounts)]
        opening = sum(await asyncio.gather(*(r.balance() for r in refs)))
        applied = 0
        refused = 0

        async def one_operation() -> None:
            nonlocal applied, refused
            account = rng.choice(refs)
            amount = rng.randint(1, 100)
            try:
                if rng.random() < 0.55:
                    await account.deposit(amount)
                    applied += amount
                else:
                    await account.withdraw(amount)
                    applied -= amount
            except InsufficientFunds:
                refused += 1

        started = time.perf_counter()
        await asyncio.gather(*(one_operation() for _ in range(operations)))
        elapsed = time.perf_counter() - started
        closing = sum(await asyncio.gather(*(r.balance() for r in refs)))
        per_silo = {s["silo"]: s["activations"] for s in await bank.stats()}
    print(
        f"{operations} operations over {accounts} accounts in {elapsed:.2f} s "
        f"({operations / elapsed:,.0f} durable operations/s)"
    )
    print(f"activations per silo: {per_silo}")
    print(f"refused overdrafts: {refused}")
    print(f"opening total {opening} + applied {applied} = closing total {closing}")
    if opening + applied != closing:
        raise SystemExit("MONEY WAS NOT CONSERVED")
    print("money conserved: OK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--operations", type=int, default=5000)
    parser.add_argument("--db", default=None, help="SQLite file (default: a temporary one)")
    args = parser.parse_args()
    if args.db:
        asyncio.run(run(args.accounts, args.operations, args.db))
        return
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args.accounts, args.operations, os.path.join(tmp, "bank.db")))


if __name__ == "__main__":
    main()
