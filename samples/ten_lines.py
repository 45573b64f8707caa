"""The README's ten lines, as a file: ``python -m samples.ten_lines`` (state in ./bank.db).

tests/test_samples.py runs it, and tests/test_docs.py checks that the README shows this file.
"""

import asyncio
from dataclasses import dataclass

from raygrain import Actor, Cluster, read_only


@dataclass
class Account:
    balance: int = 0


class BankAccount(Actor[Account]):
    async def deposit(self, amount: int) -> int:
        self.state.balance += amount  # committed before the caller sees the result
        return self.state.balance

    @read_only
    async def balance(self) -> int:
        return self.state.balance


async def main() -> None:
    async with Cluster.local(actors=[BankAccount], storage="sqlite:///bank.db") as cluster:
        alice = cluster.get(BankAccount, "alice")  # a reference; nothing is created
        await alice.deposit(100)
        print("alice has", await alice.balance())


if __name__ == "__main__":
    asyncio.run(main())
