"""SqlProjection: a read model in the user's own table, in the database the cluster stores its
state in, with the projection's offsets committed in the same transaction. On a real SQLite
file and on the test PostgreSQL server: a handler that raises part-way through a batch leaves
nothing of that batch in the table (the retry applies it once), a restart does not apply
anything twice, and read-your-writes waits for a command's token."""

from __future__ import annotations

import sqlite3
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from raygrain import (
    Cluster,
    ConfigurationError,
    MemoryStorage,
    Sql,
    SqlProjection,
    StoredEvent,
)
from tests.events_app import Account, Deposited
from tests.helpers import wait_until

TABLE = {"name": "balances"}  # qualified per test (a PostgreSQL schema of its own)
FAIL_AT: dict[int, int] = {}  # feed position -> raises left there


class BalanceTable(SqlProjection, sources=[Account], name="sqltest.BalanceTable"):
    def setup(self, sql: Sql) -> None:
        sql.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE['name']} "
            "(account TEXT PRIMARY KEY, balance BIGINT NOT NULL, events BIGINT NOT NULL)"
        )

    async def when(self, event: Any, stored: StoredEvent, sql: Sql) -> None:
        if FAIL_AT.get(stored.position, 0) > 0:
            FAIL_AT[stored.position] -= 1
            raise RuntimeError(f"the handler fails at position {stored.position}")
        if isinstance(event, Deposited):
            table, first, second = (
                TABLE["name"],
                *(("?", "?") if sql.dialect == "sqlite" else ("$1", "$2")),
            )
            sql.execute(
                f"INSERT INTO {table} (account, balance, events) VALUES ({first}, {second}, 1) "
                f"ON CONFLICT (account) DO UPDATE SET balance = {table}.balance + "
                f"excluded.balance, events = {table}.events + 1",
                stored.stream.rsplit("/", 1)[-1],
                event.amount,
            )


RAISE_IN_TRANSACTION: dict[int, int] = {}  # feed position -> raises left there


class ConnectionTable(SqlProjection, sources=[Account], name="sqltest.ConnectionTable"):
    """The same table, written through the store's own connection (``sql.run``): each event
    reads its account's row and writes it back, inside the transaction of the offsets."""

    def setup(self, sql: Sql) -> None:
        BalanceTable.setup(self, sql)  # type: ignore[arg-type]

    async def when(self, event: Any, stored: StoredEvent, sql: Sql) -> None:
        if not isinstance(event, Deposited):
            return
        table, account, position = TABLE["name"], stored.stream.rsplit("/", 1)[-1], stored.position

        def fail_here() -> None:
            # Raised inside the transaction, after the batch's earlier events were written.
            if RAISE_IN_TRANSACTION.get(position, 0) > 0:
                RAISE_IN_TRANSACTION[position] -= 1
                raise RuntimeError(f"the transaction fails at position {position}")

        def on_sqlite(connection: sqlite3.Connection) -> None:
            row = connection.execute(
                f"SELECT balance, events FROM {table} WHERE account = ?", (account,)
            ).fetchone()
            balance, events = row or (0, 0)
            fail_here()
            connection.execute(
                f"INSERT OR REPLACE INTO {table} (account, balance, events) VALUES (?, ?, ?)",
                (account, balance + event.amount, events + 1),
            )

        async def on_postgres(connection: Any) -> None:
            row = await connection.fetchrow(
                f"SELECT balance, events FROM {table} WHERE account = $1", account
            )
            balance, events = (row["balance"], row["events"]) if row else (0, 0)
            fail_here()
            await connection.execute(
                f"INSERT INTO {table} (account, balance, events) VALUES ($1, $2, $3) "
                "ON CONFLICT (account) DO UPDATE SET balance = excluded.balance, "
                "events = excluded.events",
                account,
                balance + event.amount,
                events + 1,
            )

        sql.run(on_sqlite if sql.dialect == "sqlite" else on_postgres)


Rows = dict[str, tuple[int, int]]


@pytest.fixture(params=["sqlite", "postgres"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[str, Callable[[], Awaitable[Rows]]]:
    """A storage URL, and a reader of the user's table through a connection of the test's own."""
    FAIL_AT.clear()
    RAISE_IN_TRANSACTION.clear()
    if request.param == "sqlite":
        path = tmp_path / "state.db"
        TABLE["name"] = "balances"

        async def read_sqlite() -> Rows:
            with sqlite3.connect(path) as connection:
                found = connection.execute(f"SELECT account, balance, events FROM {TABLE['name']}")
                return {a: (b, e) for a, b, e in found}

        return f"sqlite:///{path}", read_sqlite
    url = request.getfixturevalue("postgres_url")
    schema = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["schema"][0]
    TABLE["name"] = f'"{schema}".balances_{uuid.uuid4().hex[:6]}'
    dsn = url.split("?")[0]

    async def read_postgres() -> Rows:
        import asyncpg

        connection = await asyncpg.connect(dsn)
        try:
            found = await connection.fetch(f"SELECT account, balance, events FROM {TABLE['name']}")
            return {r["account"]: (r["balance"], r["events"]) for r in found}
        finally:
            await connection.close()

    return url, read_postgres


async def test_a_failed_batch_leaves_nothing_and_each_event_lands_once(
    store: tuple[str, Callable[[], Awaitable[Rows]]],
) -> None:
    url, rows = store
    async with Cluster.local(actors=[Account], storage=url) as writers:  # no projection yet
        for amount in range(1, 11):
            await writers.get(Account, "a" if amount % 2 else "b").deposit(amount)
    # The projection reads all ten in one batch and fails at the seventh, twice: the six
    # statements before it must not commit with the failure, nor be applied again after it.
    FAIL_AT[7] = 2
    async with Cluster.local(actors=[Account, BalanceTable], storage=url) as cluster:
        table = BalanceTable.of(cluster)
        await table.caught_up({"es.Account": 10}, 30)
        assert FAIL_AT[7] == 0  # it did fail, twice
        assert await rows() == {"a": (1 + 3 + 5 + 7 + 9, 5), "b": (2 + 4 + 6 + 8 + 10, 5)}
        written = await cluster.get(Account, "a").deposit(100)
        positions = await table.caught_up(written)  # read-your-writes, then your own query
        assert positions["es.Account"] >= written.position
        assert (await rows())["a"] == (125, 6)
    # A restart goes on from the committed offsets: nothing is applied twice.
    async with Cluster.local(actors=[Account, BalanceTable], storage=url) as again:
        written = await again.get(Account, "b").deposit(1000)
        await BalanceTable.of(again).caught_up(written)
        assert await rows() == {"a": (125, 6), "b": (1030, 6)}


async def test_a_handler_on_the_stores_connection_applies_each_event_once(
    store: tuple[str, Callable[[], Awaitable[Rows]]],
) -> None:
    url, rows = store
    async with Cluster.local(actors=[Account], storage=url) as writers:
        for amount in range(1, 11):
            await writers.get(Account, "a" if amount % 2 else "b").deposit(amount)
    # One batch of ten; the transaction fails at the eighth event, twice, after seven events
    # were written through the connection: none of them may stay, nor land twice after.
    RAISE_IN_TRANSACTION[8] = 2
    async with Cluster.local(actors=[Account, ConnectionTable], storage=url) as cluster:
        table = ConnectionTable.of(cluster)
        await table.caught_up({"es.Account": 10}, 30)
        assert RAISE_IN_TRANSACTION[8] == 0  # it did fail, twice
        assert await rows() == {"a": (25, 5), "b": (30, 5)}
        written = await cluster.get(Account, "a").deposit(100)
        await table.caught_up(written)
        assert (await rows())["a"] == (125, 6)
    async with Cluster.local(actors=[Account, ConnectionTable], storage=url) as again:
        written = await again.get(Account, "b").deposit(1000)
        await ConnectionTable.of(again).caught_up(written)
        assert await rows() == {"a": (125, 6), "b": (1030, 6)}


async def test_sql_run_refuses_what_it_cannot_call() -> None:
    with pytest.raises(ConfigurationError, match="function of the connection"):
        Sql("sqlite").run("SELECT 1")  # type: ignore[arg-type]

    async def coroutine(connection: Any) -> None:
        pass

    with pytest.raises(ConfigurationError, match="plain def, not async def"):
        Sql("sqlite").run(coroutine)
    Sql("postgresql").run(coroutine)  # asyncpg's connection is awaited


async def test_a_store_without_sql_is_refused_when_the_cluster_starts() -> None:
    with pytest.raises(ConfigurationError, match="BalanceTable keeps its read model in SQL"):
        Cluster.local(actors=[Account, BalanceTable], storage=MemoryStorage())


async def test_a_bad_statement_fails_the_batch_and_the_projection_says_why(
    tmp_path: Path,
) -> None:
    FAIL_AT.clear()
    TABLE["name"] = "no such table at all"  # a syntax error in every statement
    url = f"sqlite:///{tmp_path / 'state.db'}"
    async with Cluster.local(actors=[Account, BalanceTable], storage=url) as cluster:
        await cluster.get(Account, "a").deposit(1)

        async def failing() -> bool:
            stats = await cluster.stats()
            errors = [p.get("error") for s in stats for p in s.get("projections", {}).values()]
            return any(e and "StorageError" in e for e in errors)

        await wait_until(failing, "the projection to report its failing statement")
