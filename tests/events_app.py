"""Event-sourced actors and projections the event-sourcing tests share (and the crash test's
subprocess imports)."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from raygrain import (
    EventSourcedActor,
    Projection,
    Rows,
    Sql,
    SqlProjection,
    StoredEvent,
    Written,
    always_interleave,
    read_only,
)


@dataclass
class Wallet:
    balance: int = 0
    history: list[int] = field(default_factory=list)


@dataclass
class Deposited:
    amount: int


@dataclass
class Withdrawn:
    amount: int


@dataclass
class Renamed:
    __event_name__ = "Renamed"
    label: str = ""


WalletEvent = Deposited | Withdrawn | Renamed


class Account(EventSourcedActor[Wallet, WalletEvent], name="es.Account", snapshot_every=5):
    async def on_activate(self) -> None:
        self.balance_at_activation = self.state.balance  # the state is loaded by now

    def apply(self, state: Wallet, event: WalletEvent) -> Wallet:
        if isinstance(event, Deposited):
            return Wallet(state.balance + event.amount, [*state.history, event.amount])
        if isinstance(event, Withdrawn):
            return Wallet(state.balance - event.amount, [*state.history, -event.amount])
        return state

    async def deposit(self, amount: int) -> Written | None:
        if amount <= 0:
            raise ValueError("amount must be positive")
        self.raise_event(Deposited(amount))
        return await self.confirm_events()

    async def withdraw(self, amount: int) -> int:
        self.raise_event(Withdrawn(amount))
        if self.state.balance < 0:
            raise ValueError("insufficient funds")  # raised: nothing appended
        return self.state.balance

    async def deposit_twice(self, amount: int) -> int:
        self.raise_event(Deposited(amount))
        self.raise_event(Deposited(amount))
        return self.version

    async def deposit_then_unstorable(self, amount: int) -> None:
        self.raise_event(Deposited(amount))
        self.raise_event(Renamed(label=object()))  # type: ignore[arg-type]  # not encodable

    async def deposit_returning_unsendable(self, amount: int) -> object:
        self.raise_event(Deposited(amount))
        return object()  # the result cannot be sent: the turn fails, nothing is appended

    async def deposit_then_foreign(self, amount: int) -> None:
        self.raise_event(Deposited(amount))
        self.raise_event("a string is none of its event types")  # type: ignore[arg-type]

    @read_only
    async def balance(self) -> int:
        return self.state.balance

    @read_only
    async def snapshot(self) -> list[Any]:
        return [self.state.balance, self.state.history, self.version]

    async def leave(self) -> None:
        self.context.deactivate_on_idle()

    @read_only
    async def activated_with(self) -> int:
        return self.balance_at_activation


# Tests hold a projection's handler on a gate to make it lag behind on purpose.
GATES: dict[str, asyncio.Event] = {}


class Balances(Projection, name="es.Balances", sources=[Account]):
    """A read model: each account's balance and event count."""

    async def when(self, event: Any, stored: StoredEvent, rows: Rows) -> None:
        gate = GATES.get("Balances")
        if gate is not None:
            await gate.wait()
        key = stored.stream.split("/", 1)[1]
        row = await rows.get(key, {"balance": 0, "events": 0})
        sign = -1 if isinstance(event, Withdrawn) else 1
        amount = getattr(event, "amount", 0)
        rows.put(key, {"balance": row["balance"] + sign * amount, "events": row["events"] + 1})


class Totals(Projection, name="es.Totals", sources=[Account]):
    """A second read model of the same feed: the sum of all deposits."""

    async def when(self, event: Any, stored: StoredEvent, rows: Rows) -> None:
        gate = GATES.get("Totals")
        if gate is not None:
            await gate.wait()
        if isinstance(event, Deposited):
            rows.put("deposits", await rows.get("deposits", 0) + event.amount)


class Strict(Projection, name="es.Strict", sources=[Account]):
    """Each stream's deposits in a row the stream's first event creates: a later event fails
    unless its row exists."""

    async def when(self, event: Any, stored: StoredEvent, rows: Rows) -> None:
        key = stored.stream.split("/", 1)[1]
        if stored.version == 1:
            rows.put(key, [getattr(event, "amount", 0)])
            return
        row = await rows.get(key)
        if row is None:
            raise LookupError(f"no row for {key} at version {stored.version}")
        rows.put(key, [*row, getattr(event, "amount", 0)])


# Whether Poisoned's handler fails on an event of 13 (a poison event until fixed).
POISON = {"on": False}


class Poisoned(Projection, name="es.Poisoned", sources=[Account]):
    """Sums deposits; fails on an amount of 13 while ``POISON["on"]``."""

    async def when(self, event: Any, stored: StoredEvent, rows: Rows) -> None:
        amount = getattr(event, "amount", 0)
        if amount == 13 and POISON["on"]:
            raise ValueError("13 is unlucky")
        rows.put("sum", await rows.get("sum", 0) + amount)


class Sneaky(EventSourcedActor[Wallet, WalletEvent], name="es.Sneaky"):
    """Raises events where none may be raised: in a read-only and in an interleaving method."""

    def apply(self, state: Wallet, event: WalletEvent) -> Wallet:
        if isinstance(event, Deposited):
            return Wallet(state.balance + event.amount, [*state.history, event.amount])
        return state

    async def deposit(self, amount: int) -> Written | None:
        self.raise_event(Deposited(amount))
        return await self.confirm_events()

    @read_only
    async def deposit_read_only(self, amount: int) -> int:
        self.raise_event(Deposited(amount))
        return self.version

    @always_interleave
    async def deposit_interleaved(self, amount: int) -> int:
        self.raise_event(Deposited(amount))
        return self.version

    @read_only
    async def wallet(self) -> tuple[int, list[int], int]:
        await asyncio.sleep(0)  # (read-only calls run together: let them overlap)
        return self.state.balance, self.state.history, self.version


# Whether BadKeys's handler puts a row under a key that cannot be one (a tuple).
BAD_KEY = {"on": False}


class BadKeys(Projection, name="es.BadKeys", sources=[Account]):
    """Counts events per stream; puts a row under a tuple key while ``BAD_KEY["on"]``."""

    async def when(self, event: Any, stored: StoredEvent, rows: Rows) -> None:
        key: Any = tuple(stored.stream.split("/", 1)) if BAD_KEY["on"] else stored.stream
        rows.put(key, await rows.get(stored.stream, 0) + 1)


ES_ACTORS = [Account, Balances, Totals]


class Ledger(SqlProjection, name="es.Ledger", sources=[Account]):
    """A read model in a table of its own on the SQLite file (the crash test's): each event
    reads the account's row through the store's connection and writes it back, inside the
    transaction that commits the offsets. An event applied twice would show in ``events``."""

    def setup(self, sql: Sql) -> None:
        sql.execute(
            "CREATE TABLE IF NOT EXISTS ledger (account TEXT PRIMARY KEY, "
            "balance INTEGER NOT NULL, events INTEGER NOT NULL)"
        )

    async def when(self, event: Any, stored: StoredEvent, sql: Sql) -> None:
        key = stored.stream.split("/", 1)[1]
        sign = -1 if isinstance(event, Withdrawn) else 1
        amount = sign * getattr(event, "amount", 0)

        def post(connection: sqlite3.Connection) -> None:
            row = connection.execute(
                "SELECT balance, events FROM ledger WHERE account = ?", (key,)
            ).fetchone()
            balance, events = row or (0, 0)
            connection.execute(
                "INSERT OR REPLACE INTO ledger (account, balance, events) VALUES (?, ?, ?)",
                (key, balance + amount, events + 1),
            )

        sql.run(post)


CRASH_ACTORS = [*ES_ACTORS, Ledger]  # on a SQLite file (Ledger needs a SQL store)


class _Counts(Projection):
    """Counts each stream's events (the Ray test's read model)."""

    async def when(self, event: Any, stored: StoredEvent, rows: Rows) -> None:
        rows.put(stored.stream, await rows.get(stored.stream, 0) + 1)


# Projections are placed on the ring by type name: among sixteen, a few land on any one silo,
# so the Ray test can pick those hosted on the node it kills. (Module-level names: Ray imports
# them by reference.)
RAY_PROJECTIONS: list[type[Projection]] = []
for _index in range(16):
    _projection = type(
        f"Counts{_index}",
        (_Counts,),
        {"__module__": __name__},
        name=f"es.Counts{_index}",
        sources=[Account],
    )
    globals()[_projection.__name__] = _projection
    RAY_PROJECTIONS.append(_projection)
