"""``@idempotent``: an operation runs once per idempotency key, the key kept in the actor's state
so that it commits with the operation's effect."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from raygrain import (
    Actor,
    Cluster,
    ConfigurationError,
    IdempotencyKeys,
    InvalidArgumentsError,
    idempotent,
)


@dataclass
class Account:
    balance: int = 0
    applied: IdempotencyKeys = field(default_factory=lambda: IdempotencyKeys(keep=3))


class Wallet(Actor[Account], name="idem.Wallet"):
    @idempotent
    async def deposit(self, key: str, amount: int) -> int:
        if amount <= 0:
            raise ValueError("amount must be positive")
        self.state.balance += amount
        return self.state.balance

    @idempotent(key="request")
    async def withdraw(self, amount: int, request: str) -> int:
        self.state.balance -= amount
        return self.state.balance

    async def fence(self, key: str) -> None:
        self.state.applied.record(key)


@dataclass
class Plain:
    count: int = 0


class NoKeys(Actor[Plain], name="idem.NoKeys"):
    @idempotent
    async def bump(self, key: str) -> int:
        self.state.count += 1
        return self.state.count


async def test_a_repeated_key_returns_the_first_result_without_acting_again() -> None:
    async with Cluster.local(actors=[Wallet, NoKeys]) as cluster:
        wallet = cluster.get(Wallet, "w")
        assert await wallet.deposit("k1", 10) == 10
        assert await wallet.deposit("k1", 10) == 10  # a retry: not applied again
        assert await wallet.deposit("k2", 5) == 15
        assert await wallet.withdraw(3, request="r1") == 12
        assert await wallet.withdraw(3, request="r1") == 12
        with pytest.raises(ValueError):
            await wallet.deposit("k3", -1)  # raised: nothing recorded, so a retry runs it
        assert await wallet.deposit("k3", 1) == 13
        await wallet.fence("late")
        assert await wallet.deposit("late", 100) is None  # fenced: a late duplicate is a no-op
        # Only the newest 3 keys are kept: the oldest runs again.
        assert await wallet.deposit("k1", 10) == 23
        with pytest.raises(InvalidArgumentsError, match="must be a non-empty string"):
            await wallet.deposit("", 1)
        with pytest.raises(ConfigurationError, match="has no IdempotencyKeys field"):
            await cluster.get(NoKeys, "n").bump("k")
        assert await wallet.deposit("k4", 1) == 24  # the silo serves on


def test_a_method_without_the_key_argument_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="dedupes by the argument 'key'"):

        class Bad(Actor[Account], name="idem.Bad"):
            @idempotent
            async def go(self, amount: int) -> None: ...
