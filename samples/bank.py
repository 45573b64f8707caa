"""A bank: account actors spread over three silos, money moved by multi-actor transactions.

Many concurrent clients move random amounts between random accounts, each transfer one ACID
transaction over two accounts that usually live on different silos: half as a client
transaction block (``bank.transact``), half as ``BankAccount.transfer_to``, which starts its own
transaction inside the silo. An overdraft is refused by the account itself: the user's own
exception reaches the caller and the whole transfer leaves no trace. At the end the sample checks
that money was conserved and that no account went below zero.

    python -m samples.bank [--accounts 200] [--transfers 3000] [--db bank.db]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

from raygrain import Actor, Cluster, TransactionAbortedError, read_only, transactional

OPENING_BALANCE = 100
CLIENTS = 50  # transfers in flight at once


@dataclass
class Account:
    balance: int = 0
    opened: bool = False
    history: list[int] = field(default_factory=list)  # the last few amounts, signed


class InsufficientFunds(Exception):
    """Raised by an account asked to go below zero."""


class BankAccount(Actor[Account], name="samples.BankAccount"):
    async def open(self, opening_balance: int) -> int:
        """Credit the opening balance, once in the account's life (a later run reuses it)."""
        if not self.state.opened:
            self.state.opened = True
            self.state.balance += opening_balance
        return self.state.balance

    @transactional
    async def deposit(self, amount: int) -> int:
        if amount <= 0:
            raise ValueError(f"deposit must be positive, got {amount}")
        self.state.balance += amount
        self.state.history = [*self.state.history[-9:], amount]
        return self.state.balance

    @transactional
    async def withdraw(self, amount: int) -> int:
        if amount <= 0:
            raise ValueError(f"withdrawal must be positive, got {amount}")
        if amount > self.state.balance:
            raise InsufficientFunds(f"account {self.context.key}: cannot withdraw {amount}")
        self.state.balance -= amount
        self.state.history = [*self.state.history[-9:], -amount]
        return self.state.balance

    @transactional
    async def transfer_to(self, other: str, amount: int) -> None:
        """Both sides or neither: a transaction of its own when called outside one."""
        await self.withdraw(amount)
        await self.actors.get(BankAccount, other).deposit(amount)

    @read_only
    async def balance(self) -> int:
        return self.state.balance


async def run(accounts: int, transfers: int, db_path: str) -> None:
    rng = random.Random(42)
    async with Cluster.local(actors=[BankAccount], silos=3, storage=f"sqlite:///{db_path}") as bank:
        refs = [bank.get(BankAccount, f"acct-{i}") for i in range(accounts)]
        opening = sum(await asyncio.gather(*(r.open(OPENING_BALANCE) for r in refs)))
        outcomes: Counter[str] = Counter()

        async def one_transfer(n: int) -> None:
            source, target = rng.sample(range(accounts), 2)
            amount = rng.randint(1, 40)

            async def move() -> None:
                await refs[source].withdraw(amount)
                await refs[target].deposit(amount)

            try:
                if n % 2:
                    await bank.transact(move, retries=5)  # the client coordinates
                else:
                    for attempt in range(6):  # the silo coordinates; retry by hand
                        try:
                            await refs[source].transfer_to(f"acct-{target}", amount)
                            break
                        except TransactionAbortedError:
                            if attempt == 5:
                                raise
                            await asyncio.sleep(rng.uniform(0, 0.002 * 2**attempt))
                outcomes["committed"] += 1
            except InsufficientFunds:
                outcomes["refused: overdraft"] += 1
            except TransactionAbortedError:
                outcomes["aborted after retries"] += 1

        async def client(first: int) -> None:
            for n in range(first, transfers, CLIENTS):
                await one_transfer(n)

        started = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(CLIENTS)))
        elapsed = time.perf_counter() - started
        closing_balances = await asyncio.gather(*(r.balance() for r in refs))
        per_silo = {s["silo"]: s["activations"] for s in await bank.stats()}
    closing = sum(closing_balances)
    print(
        f"{transfers} transfers between {accounts} accounts in {elapsed:.2f} s "
        f"({outcomes['committed'] / elapsed:,.0f} committed transactions/s)"
    )
    print(f"activations per silo: {per_silo}")
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    print(f"total before {opening}, after {closing}; lowest balance {min(closing_balances)}")
    if closing != opening or min(closing_balances) < 0:
        raise SystemExit("MONEY WAS NOT CONSERVED")
    print("money conserved: OK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--transfers", type=int, default=3000)
    parser.add_argument("--db", default=None, help="SQLite file (default: a temporary one)")
    args = parser.parse_args()
    if args.accounts < 2 or args.transfers < 0:
        parser.error("--accounts must be at least 2 and --transfers at least 0")
    if args.db:
        asyncio.run(run(args.accounts, args.transfers, args.db))
        return
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args.accounts, args.transfers, os.path.join(tmp, "bank.db")))


if __name__ == "__main__":
    main()
