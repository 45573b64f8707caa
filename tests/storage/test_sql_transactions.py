"""storage.SqlTransactions: a caller's own statements commit with some records in one
transaction, all or nothing (what SqlProjection relies on), on SQLite and PostgreSQL."""

from __future__ import annotations

import urllib.parse
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from raygrain.actors import ActorId, InconsistentStateError, StorageError
from raygrain.storage import SqlTransactions, StateWrite, open_storage

KEY = ActorId("sqltest.Offsets", "main")


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "sqlite":
        provider = open_storage(f"sqlite:///{tmp_path / 'state.db'}")
        provider.table = "totals"  # type: ignore[attr-defined]
    else:
        url = request.getfixturevalue("postgres_url")
        schema = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["schema"][0]
        provider = open_storage(url)
        provider.table = f'"{schema}".totals_{uuid.uuid4().hex[:6]}'  # type: ignore[attr-defined]
    assert isinstance(provider, SqlTransactions)
    await provider.commit_sql([(f"CREATE TABLE {provider.table} (n BIGINT)", ())], [])  # type: ignore[attr-defined]
    try:
        yield provider
    finally:
        await provider.aclose()


def _insert(store: Any, n: int) -> tuple[str, tuple[Any, ...]]:
    mark = "?" if store.sql_dialect == "sqlite" else "$1"
    return f"INSERT INTO {store.table} (n) VALUES ({mark})", (n,)


async def _rows(store: Any) -> list[Any]:
    if store.sql_dialect == "sqlite":
        import sqlite3

        with sqlite3.connect(store.path) as connection:
            return connection.execute(f"SELECT n FROM {store.table}").fetchall()
    import asyncpg

    connection = await asyncpg.connect(store.dsn)
    try:
        return list(await connection.fetch(f"SELECT n FROM {store.table}"))
    finally:
        await connection.close()


async def test_statements_and_writes_commit_together(store: Any) -> None:
    (etag,) = await store.commit_sql(
        [_insert(store, 1), _insert(store, 2)], [StateWrite(KEY, b"offset 2", None)]
    )
    assert (await store.read(KEY)).data == b"offset 2"
    assert (await store.read(KEY)).etag == etag
    assert sorted(r[0] for r in await _rows(store)) == [1, 2]


async def test_a_stale_etag_commits_no_statement(store: Any) -> None:
    (etag,) = await store.commit_sql([], [StateWrite(KEY, b"first", None)])
    await store.write(KEY, b"someone else", etag)  # the ETag we hold is stale now
    with pytest.raises(InconsistentStateError):
        await store.commit_sql([_insert(store, 3)], [StateWrite(KEY, b"late", etag)])
    assert await _rows(store) == []
    assert (await store.read(KEY)).data == b"someone else"


async def test_a_failing_statement_commits_no_write(store: Any) -> None:
    with pytest.raises(StorageError, match="nothing was written|syntax"):
        await store.commit_sql(
            [_insert(store, 4), ("THIS IS NOT SQL", ())], [StateWrite(KEY, b"offset", None)]
        )
    assert (await store.read(KEY)).data is None
    assert await _rows(store) == []
    # The store serves on: the next transaction goes through.
    await store.commit_sql([_insert(store, 5)], [StateWrite(KEY, b"offset", None)])
    assert [r[0] for r in await _rows(store)] == [5]


async def test_a_function_step_reads_and_writes_inside_the_transaction(store: Any) -> None:
    seen: list[Any] = []

    def on_sqlite(connection: Any) -> None:
        seen.append(connection.execute(f"SELECT sum(n) FROM {store.table}").fetchone()[0])
        connection.execute(f"INSERT INTO {store.table} (n) VALUES (?)", (seen[-1] * 10,))

    async def on_postgres(connection: Any) -> None:
        seen.append(await connection.fetchval(f"SELECT sum(n) FROM {store.table}"))
        await connection.execute(f"INSERT INTO {store.table} (n) VALUES ($1)", seen[-1] * 10)

    function = on_sqlite if store.sql_dialect == "sqlite" else on_postgres
    await store.commit_sql([_insert(store, 6), function], [StateWrite(KEY, b"offset", None)])
    assert seen == [6]  # the statement before it, uncommitted yet, is visible to it
    assert sorted(r[0] for r in await _rows(store)) == [6, 60]


async def test_a_function_that_raises_commits_nothing(store: Any) -> None:
    def fails(connection: Any) -> None:
        raise LookupError("the caller's own failure")

    with pytest.raises(LookupError, match="the caller's own failure"):
        await store.commit_sql([_insert(store, 7), fails], [StateWrite(KEY, b"offset", None)])
    assert (await store.read(KEY)).data is None
    assert await _rows(store) == []
    await store.commit_sql([_insert(store, 8)], [StateWrite(KEY, b"offset", None)])
    assert [r[0] for r in await _rows(store)] == [8]
