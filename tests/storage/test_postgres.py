"""What PostgresStorage adds to the shared contract (tests/storage/test_conformance.py runs that
against it): group commit, the versioned schema, options, split brain across two connection
pools, and outages of a real server (stopped and started again mid-workload)."""

from __future__ import annotations

import asyncio
import secrets
import time
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from raygrain.actors import (
    ActorId,
    ConfigurationError,
    InconsistentStateError,
    InvalidEventError,
    RaygrainError,
    StorageError,
    StorageSchemaError,
    decode_state,
)
from raygrain.benchmarks._postgres_server import ThrowawayPostgres, _free_port, find_postgres_bin
from raygrain.runtime import Cluster
from raygrain.storage import NewEvent, PostgresStorage, StateRecord, StateWrite, open_storage
from raygrain.storage._postgres import SCHEMA_VERSION
from tests.app import Account, BankAccount
from tests.crash_app import Depositor, Deposits
from tests.helpers import bounded

ALICE = ActorId("Account", "alice")
BOB = ActorId("Account", "bob")


def _schema(url: str) -> str:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["schema"]


@pytest.fixture
async def storage(postgres_url: str) -> AsyncIterator[PostgresStorage]:
    store = open_storage(postgres_url)
    assert isinstance(store, PostgresStorage)
    async with store:
        yield store


async def _sql(postgres_dsn: str, statement: str, *args: object) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(postgres_dsn)
    try:
        return list(await connection.fetch(statement, *args))
    finally:
        await connection.close()


# -- group commit ------------------------------------------------------------------------------


async def test_concurrent_writes_leave_in_few_statements(storage: PostgresStorage) -> None:
    actors = [ActorId("Account", i) for i in range(1000)]
    etags = await asyncio.gather(*(storage.write(a, b"v1", None) for a in actors))
    before = storage.commits
    etags = await asyncio.gather(
        *(storage.write(a, b"v2", e) for a, e in zip(actors, etags, strict=True))
    )
    assert set(etags) == {"2"}
    # The committer takes half the queue at a time: 1,000 writes in about log2(1000) batches.
    assert storage.commits - before <= 12
    assert await storage.read(actors[500]) == StateRecord(b"v2", "2")


async def test_a_group_that_partly_matches_leaves_the_rest_of_its_batch_committed(
    storage: PostgresStorage,
) -> None:
    alice = await storage.write(ALICE, b"a1", None)
    await storage.write(BOB, b"b1", None)
    others = [ActorId("Account", f"o{i}") for i in range(50)]
    before = storage.commits
    # In one batch: a group whose second write is stale, beside single writes and a good group.
    results = await asyncio.gather(
        storage.write_many([StateWrite(ALICE, b"a2", alice), StateWrite(BOB, b"b2", None)]),
        *(storage.write(o, b"x", None) for o in others),
        storage.write_many(
            [StateWrite(ActorId("G", 1), b"g", None), StateWrite(ActorId("G", 2), b"g", None)]
        ),
        return_exceptions=True,
    )
    assert isinstance(results[0], InconsistentStateError)
    assert (results[0].stored_etag, results[0].expected_etag) == ("1", None)
    assert results[1:] == ["1"] * 50 + [["1", "1"]]
    assert storage.commits - before == 1  # one batch: rolled back, run again without the group
    assert await storage.read(ALICE) == StateRecord(b"a1", alice)  # the group left no trace


async def test_a_batch_carries_at_most_max_batch_bytes_of_state(
    storage: PostgresStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (40 records of 30 MB made one statement over PostgreSQL's 1 GB message limit: every
    # write failed, for ever. Here the cap is made small instead of the records large.)
    monkeypatch.setattr("raygrain.storage._postgres_batch.MAX_BATCH_BYTES", 1000)
    actors = [ActorId("Big", i) for i in range(10)]
    before = storage.commits
    etags = await asyncio.gather(
        *(storage.write(a, b"x" * 400, None) for a in actors[:-1]),
        storage.write(actors[-1], b"x" * 5000, None),  # over the cap: in a batch of its own
    )
    assert set(etags) == {"1"}
    assert storage.commits - before >= 6  # at most two of 400 bytes per batch, then the big one
    assert await storage.read(actors[-1]) == StateRecord(b"x" * 5000, "1")


async def test_writes_to_one_record_in_one_batch_apply_in_queue_order(
    storage: PostgresStorage,
) -> None:
    first = storage.write(ALICE, b"one", None)
    second = storage.write(ALICE, b"two", "1")
    third = storage.clear(ALICE, "2")
    assert list(await asyncio.gather(first, second, third)) == ["1", "2", "3"]
    assert await storage.read(ALICE) == StateRecord(None, "3")


async def test_with_batches_in_flight_each_records_writes_still_apply_in_queue_order(
    postgres_url: str,
) -> None:
    store = open_storage(f"{postgres_url}&pipelines=3")
    assert isinstance(store, PostgresStorage) and store.pipelines == 3
    async with store:
        actors = [ActorId("Chain", i) for i in range(300)]
        # Five writes per record issued at once, each naming the ETag the previous one leaves:
        # only queue order, record by record, lets every one of them succeed.
        results = await asyncio.gather(
            *(
                store.write(a, b"%d" % n, None if n == 0 else str(n))
                for n in range(5)
                for a in actors
            ),
            return_exceptions=True,
        )
        assert results == [str(n + 1) for n in range(5) for _ in actors]
        assert store.commits >= 5  # a record's next write waits for a later batch
        assert await store.read(actors[7]) == StateRecord(b"4", "5")


async def test_an_etag_it_never_gave_out_matches_nothing(storage: PostgresStorage) -> None:
    await storage.write(ALICE, b"one", None)
    for foreign in ("01", "0", "-1", "abc", "1.0"):
        with pytest.raises(InconsistentStateError):
            await storage.write(ALICE, b"x", foreign)
    with pytest.raises(StorageError, match="names a record more than once"):
        await storage.write_many([StateWrite(BOB, b"1", None), StateWrite(BOB, b"2", None)])


# -- bad input fails alone -------------------------------------------------------------------


def _incompressible(length: int) -> str:
    # (A repetitive key compresses and fits the index; random text does not.)
    return secrets.token_urlsafe(length)[:length]


async def test_a_key_too_long_for_the_index_fails_alone_not_its_batch(
    storage: PostgresStorage,
) -> None:
    long_key = ActorId("Account", _incompressible(4000))
    others = [ActorId("Account", f"o{i}") for i in range(20)]
    results = await asyncio.gather(
        *(storage.write(o, b"x", None) for o in others),
        storage.write(long_key, b"x", None),
        return_exceptions=True,
    )
    assert results[:-1] == ["1"] * 20  # in the bad write's batch, and written
    assert isinstance(results[-1], StorageError), results[-1]
    message = str(results[-1])
    assert "refused the write of Account/" in message and "nothing was written" in message
    assert "too long" in message and len(message) < 1000  # named, not quoted whole
    assert await storage.read(others[0]) == StateRecord(b"x", "1")
    assert await storage.read(long_key) == StateRecord(None, None)


async def test_a_stream_name_too_long_for_the_index_fails_alone_not_its_batch(
    storage: PostgresStorage,
) -> None:
    long_stream = f"orders-{_incompressible(4000)}"
    results = await asyncio.gather(
        *(
            storage.append(f"orders-{i}", "orders", None, [NewEvent("T", i, "e")])
            for i in range(20)
        ),
        storage.append(long_stream, "orders", None, [NewEvent("T", 0, "e")]),
        return_exceptions=True,
    )
    assert all(not isinstance(r, BaseException) for r in results[:-1]), results[:-1]
    assert isinstance(results[-1], StorageError), results[-1]
    assert "refused the append to stream 'orders-" in str(results[-1])
    assert len(str(results[-1])) < 1000
    assert await storage.head("orders") == 20


@pytest.mark.parametrize("name", ["or\x00ders-1", "orders-\ud800"], ids=["nul", "lone-surrogate"])
async def test_a_stream_name_postgresql_text_cannot_hold_is_refused_with_a_typed_error(
    storage: PostgresStorage, name: str
) -> None:
    good = asyncio.create_task(storage.append("orders-0", "orders", None, [NewEvent("T", 0, "e")]))
    with pytest.raises(InvalidEventError, match="NUL or a lone surrogate"):
        await storage.append(name, "orders", None, [NewEvent("T", 0, "e")])
    with pytest.raises(InvalidEventError, match="event id"):
        await storage.append("orders-2", "orders", None, [NewEvent("T", 0, name)])
    assert (await good).version == 1
    assert await storage.read_stream(name) == []  # (an event-sourced actor can activate)
    assert await storage.read_category(name) == [] and await storage.head(name) == 0


# -- schema --------------------------------------------------------------------------------------


async def test_the_schema_is_created_on_first_use_and_versioned(
    postgres_url: str, postgres_dsn: str
) -> None:
    schema = _schema(postgres_url)
    stores = [open_storage(postgres_url) for _ in range(4)]
    try:
        # Silos starting together: one creates, the others wait for it and find it.
        await asyncio.gather(*(s.write(ActorId("A", i), b"x", None) for i, s in enumerate(stores)))
    finally:
        await asyncio.gather(*(s.aclose() for s in stores))
    rows = await _sql(postgres_dsn, f'SELECT version FROM "{schema}".raygrain_schema')
    assert [r["version"] for r in rows] == [SCHEMA_VERSION]
    rows = await _sql(
        postgres_dsn, f'SELECT type_name, actor_key, version FROM "{schema}".raygrain_state'
    )
    assert sorted(tuple(r) for r in rows) == [("A", str(i), 1) for i in range(4)]


async def test_a_newer_schema_is_refused(postgres_url: str, postgres_dsn: str) -> None:
    async with open_storage(postgres_url) as store:  # type: ignore[attr-defined]
        await store.write(ALICE, b"x", None)
    schema = _schema(postgres_url)
    await _sql(postgres_dsn, f'UPDATE "{schema}".raygrain_schema SET version = version + 1')
    store = open_storage(postgres_url)
    try:
        message = f"schema version {SCHEMA_VERSION + 1}, newer than version {SCHEMA_VERSION}"
        with pytest.raises(StorageSchemaError, match=message):
            await store.read(ALICE)
        with pytest.raises(StorageSchemaError, match="upgrade raygrain"):
            await store.write(ALICE, b"y", "1")
    finally:
        await store.aclose()


async def test_a_database_of_schema_version_1_gains_the_later_tables_and_keeps_its_state(
    postgres_url: str, postgres_dsn: str
) -> None:
    async with open_storage(postgres_url) as store:  # type: ignore[attr-defined]
        await store.write(ALICE, b"from version 1", None)
    schema = _schema(postgres_url)
    # What a database written by the raygrain before the event log and reminders looks like.
    for table in ("raygrain_reminders", "raygrain_events", "raygrain_event_heads"):
        await _sql(postgres_dsn, f'DROP TABLE "{schema}".{table}')
    await _sql(postgres_dsn, f'UPDATE "{schema}".raygrain_schema SET version = 1')
    async with open_storage(postgres_url) as store:  # type: ignore[attr-defined]
        assert await store.read(ALICE) == StateRecord(b"from version 1", "1")
        record = await store.upsert_reminder(ALICE, "poll", 1.0, 60.0)
        assert await store.reminders_of(ALICE) == [record]
    rows = await _sql(postgres_dsn, f'SELECT version FROM "{schema}".raygrain_schema')
    assert [r["version"] for r in rows] == [SCHEMA_VERSION] == [3]


async def test_a_role_without_create_privileges_uses_a_schema_set_up_for_it(
    postgres_url: str, postgres_dsn: str
) -> None:
    schema = _schema(postgres_url)
    async with open_storage(postgres_url) as admin:  # type: ignore[attr-defined]
        await admin.write(ALICE, b"set up", None)
    role = f"app_{schema}"
    await _sql(postgres_dsn, f'CREATE ROLE "{role}" LOGIN')
    try:
        await _sql(postgres_dsn, f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
        await _sql(
            postgres_dsn,
            f'GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"',
        )
        parts = urllib.parse.urlsplit(postgres_url)
        as_app = urllib.parse.urlunsplit(
            parts._replace(netloc=f"{role}@{parts.netloc.rpartition('@')[2]}")
        )
        async with open_storage(as_app) as app:  # type: ignore[attr-defined]
            assert await app.read(ALICE) == StateRecord(b"set up", "1")
            assert await app.write(ALICE, b"by the app", "1") == "2"
    finally:
        await _sql(postgres_dsn, f'DROP OWNED BY "{role}"')
        await _sql(postgres_dsn, f'DROP ROLE "{role}"')


# -- options -----------------------------------------------------------------------------------


async def test_url_options_reach_the_provider_and_the_server(postgres_url: str) -> None:
    store = open_storage(f"{postgres_url}&pool_size=3&statement_timeout=1.5&max_batch=7")
    assert isinstance(store, PostgresStorage)
    assert (store.pool_size, store.statement_timeout, store.max_batch) == (3, 1.5, 7)
    async with store:
        assert store._pool is not None
        async with store._pool.acquire() as connection:
            assert await connection.fetchval("SHOW statement_timeout") == "1500ms"
            assert await connection.fetchval("SHOW application_name") == "raygrain"
        assert store._pool.get_max_size() == 3
    assert "pool_size" not in store.dsn and "schema" not in store.dsn


def test_the_password_stays_out_of_messages() -> None:
    store = PostgresStorage("postgresql://app:s3cret@db.example:5432/state")
    assert "s3cret" not in repr(store)
    assert "app:***@db.example:5432" in repr(store)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("host=db user=app password=s3cret dbname=shop", "unknown storage URL"),
        ("postgresql://app:s3cret@db:5432/shop?pool_size=2O", "pool_size='2O' is not a valid"),
        ("postgresql://app:s3cret#1@db:5432/shop", "must be percent-encoded"),
        ("postgresql://app:s3c?ret@db:5432/shop", "must be percent-encoded"),
        ("postgresql://app:s3c/ret@db:5432/shop", "must be percent-encoded"),
        ("postgresql://app:1234/s3cret@db:5432/shop", "must be percent-encoded"),
        ("postgresql://app:s3cret@db:notaport/shop", "the port 'notaport' is not a number"),
        ("postgresql://app:s3cret@db:99999/shop", "the port '99999' is not a number"),
        ("postgresql://app@db/shop?passwor%64=s3cret&pool_size=x", "pool_size='x'"),
    ],
    ids=[
        "key-value",
        "bad-option",
        "hash",
        "question",
        "slash",
        "slash-numeric",
        "port",
        "big",
        "encoded-key",
    ],
)
def test_a_bad_url_is_refused_when_built_without_showing_the_password(
    url: str, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message) as refused:
        open_storage(url)
    assert "s3" not in str(refused.value) and "ret" not in str(refused.value)
    if url.startswith("host="):
        with pytest.raises(ConfigurationError) as refused:
            PostgresStorage(url)
        assert "s3cret" not in str(refused.value) and "password=***" in str(refused.value)


def test_an_encoded_password_and_several_hosts_are_accepted() -> None:
    store = open_storage("postgresql://app:s3%2Fc%3Fr%23et@h1:5432,[::1]:5433/shop")
    assert "s3" not in repr(store) and "h1:5432,[::1]:5433" in repr(store)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://h/db?pool_size=0", "pool_size must be > 0"),
        ("postgresql://h/db?pool_size=many", "option pool_size='many' is not a valid value"),
        ("postgresql://h/db?statement_timeout=-1", "statement_timeout must be > 0"),
        ("postgres://h/db?read_timeout=0", "read_timeout must be > 0"),
        ("postgresql://h/db?schema=", "schema must be a name"),
        # (Sent as whole milliseconds: 0 would turn the timeout off.)
        ("postgresql://h/db?statement_timeout=0.0004", "statement_timeout must be from 0.001"),
        ("postgresql://h/db?statement_timeout=inf", "statement_timeout must be a finite"),
        ("postgresql://h/db?connect_timeout=inf", "connect_timeout must be a finite"),
        ("postgresql://h/db?sslmode=requried", "sslmode='requried' is not one of"),
    ],
    ids=[
        "pool-zero",
        "pool-text",
        "timeout-negative",
        "read-timeout-zero",
        "empty-schema",
        "timeout-under-1ms",
        "timeout-inf",
        "connect-timeout-inf",
        "sslmode-typo",
    ],
)
def test_bad_options_are_refused(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        open_storage(url)


# -- split brain -------------------------------------------------------------------------------


async def test_two_silos_owning_one_actor_cannot_both_commit(postgres_url: str) -> None:
    # Two clusters, each with its own connection pool (two machines with a stale view each):
    # both activate the same account and both write from the same ETag.
    async with (
        open_storage(postgres_url) as store_a,  # type: ignore[attr-defined]
        open_storage(postgres_url) as store_b,  # type: ignore[attr-defined]
        Cluster.local(actors=[BankAccount], storage=store_a) as first,
        Cluster.local(actors=[BankAccount], storage=store_b) as second,
    ):
        for round_number in range(20):
            name = f"acct-{round_number}"
            one, two = first.get(BankAccount, name), second.get(BankAccount, name)
            assert await one.balance() == 0 and await two.balance() == 0  # both activated
            results = await asyncio.gather(one.deposit(1), two.deposit(100), return_exceptions=True)
            won = [r for r in results if isinstance(r, int)]
            lost = [r for r in results if not isinstance(r, int)]
            assert len(won) == 1 and len(lost) == 1, results
            assert isinstance(lost[0], InconsistentStateError)
            record = await store_a.read(ActorId(BankAccount.__actor_options__.name, name))
            assert record.etag == "1"
            assert decode_state(record.data or b"", Account).balance == won[0]
            # The fenced duplicate was dropped: its next call sees the winner's state.
            assert await (two if won[0] == 1 else one).balance() == won[0]


# -- outages -------------------------------------------------------------------------------------


@pytest.fixture
def own_server() -> Iterator[ThrowawayPostgres]:
    """A server of this test's own, to stop and start (never the shared one)."""
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries: install the 'postgresql' package")
    with ThrowawayPostgres(bin_dir) as server:
        yield server


async def test_a_connection_asyncpg_finds_in_a_broken_state_is_retried_as_unreachable(
    storage: PostgresStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What asyncpg raises on a pooled connection the server dropped between two operations
    # (after a fast shutdown): "cannot switch to state 12; another operation is in progress".
    await storage.write(ALICE, b"a", None)
    fetchrow, failures = asyncpg.connection.Connection.fetchrow, [1]

    async def broken_once(self: asyncpg.Connection, *args: object, **kwargs: object) -> object:
        if failures:
            failures.pop()
            raise asyncpg.exceptions.InternalClientError("cannot switch to state 12")
        return await fetchrow(self, *args, **kwargs)

    monkeypatch.setattr(asyncpg.connection.Connection, "fetchrow", broken_once)
    assert await storage.read(ALICE) == StateRecord(b"a", "1")  # retried
    assert not failures

    async def broken(self: asyncpg.Connection, *args: object, **kwargs: object) -> object:
        raise asyncpg.exceptions.InternalClientError("cannot switch to state 12")

    monkeypatch.setattr(asyncpg.connection.Connection, "fetch", broken)
    with pytest.raises(StorageError, match="outcome unknown"):
        await storage.write(ALICE, b"b", "1")
    with pytest.raises(StorageError, match="outcome unknown"):
        await storage.append("s-1", "s", None, [NewEvent("T", 0, "e")])


async def test_an_unreachable_server_fails_reads_after_retrying_and_writes_at_once() -> None:
    url = f"postgresql://nobody@127.0.0.1:{_free_port()}/db?read_timeout=0.5&connect_timeout=1"
    store = open_storage(url)
    try:
        with pytest.raises(StorageError, match=r"unreachable for 0.5s while reading Account/alice"):
            await store.read(ALICE)
        with pytest.raises(StorageError, match="nothing was written"):
            await store.write(ALICE, b"x", None)
    finally:
        await store.aclose()


async def test_a_server_that_refuses_us_fails_at_once_without_retrying(postgres_dsn: str) -> None:
    parts = urllib.parse.urlsplit(postgres_dsn)
    url = urllib.parse.urlunsplit(parts._replace(path="/no_such_database", query=""))
    store = open_storage(f"{url}?read_timeout=600")  # a retry would outlive the test
    try:
        with pytest.raises(StorageSchemaError, match='cannot use .*"no_such_database" does not'):
            await store.read(ALICE)
    finally:
        await store.aclose()


async def test_ssl_required_of_a_server_without_it_fails_at_once_without_retrying(
    postgres_dsn: str,
) -> None:
    store = open_storage(f"{postgres_dsn}?sslmode=require&read_timeout=600")
    try:
        with pytest.raises(StorageSchemaError, match="rejected SSL upgrade"):
            await store.read(ALICE)
        with pytest.raises(StorageSchemaError, match="nothing was written"):
            await store.write(ALICE, b"x", None)
    finally:
        await store.aclose()


@pytest.mark.slow
async def test_a_server_stopped_mid_workload_loses_no_acknowledged_write(
    own_server: ThrowawayPostgres,
) -> None:
    server = own_server
    url = f"{server.dsn}?read_timeout=2&connect_timeout=2"
    writers = 40
    acked: dict[int, int] = {}
    errors: Counter[str] = Counter()
    phase = {"name": "before"}
    errors_during: Counter[str] = Counter()
    after_restart: dict[int, asyncio.Event] = {k: asyncio.Event() for k in range(writers)}
    some_errors = asyncio.Event()
    stop = asyncio.Event()

    async def write_forever(cluster: Cluster, key: int) -> None:
        account = cluster.get(Depositor, key)
        seq: int | None = None
        while not stop.is_set():
            try:
                if seq is None:
                    seq = await account.last()
                await account.deposit(seq + 1)
                seq += 1
                acked[key] = seq
                if phase["name"] == "restarted":
                    after_restart[key].set()
            except RaygrainError as exc:
                seq = None  # the write's fate may be unknown: ask the actor again
                errors[type(exc).__name__] += 1
                if phase["name"] == "down":
                    errors_during[type(exc).__name__] += 1
                    some_errors.set()
                await asyncio.sleep(0.05)  # a client's retry pause, not an ordering device

    async with Cluster.local(actors=[Depositor], silos=2, storage=url) as cluster:
        tasks = [asyncio.create_task(write_forever(cluster, k)) for k in range(writers)]
        try:
            while len(acked) < writers:
                await asyncio.sleep(0.01)
            phase["name"] = "down"
            await asyncio.to_thread(server.stop, "fast")
            await asyncio.wait_for(some_errors.wait(), 60)
            phase["name"] = "restarted"
            restarted = time.monotonic()
            await asyncio.to_thread(server.start)
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in after_restart.values())), 60)
            recovered = time.monotonic() - restarted
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
    # Typed errors only (anything else would have ended a writer with its traceback).
    assert errors_during and set(errors_during) <= {
        "StorageError",
        "InconsistentStateError",
        "ActorCallTimeout",
    }, errors_during
    async with open_storage(url) as store:  # type: ignore[attr-defined]
        for key in range(writers):
            record = await store.read(ActorId(Depositor.__actor_options__.name, key))
            state = decode_state(record.data or b"", Deposits)
            assert len(state.seqs) >= acked[key], f"account {key} lost acknowledged writes"
            assert state.seqs == list(range(1, len(state.seqs) + 1))
    print(f"errors during the outage: {dict(errors_during)}; all writers back in {recovered:.2f}s")


async def test_reads_waiting_for_a_server_that_never_answers_share_one_attempt() -> None:
    """A server that accepts connections and never answers (a frozen host): each waiting
    read tried its own connection in turn, so N reads took N connect timeouts (here 10 x 5 s)
    and closing the store waited for them. They share one attempt now, each bounded by its
    read_timeout, and closing does not wait for the attempt."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # (never answers)

    silent = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    store = open_storage(f"postgresql://u:p@127.0.0.1:{port}/db?connect_timeout=5&read_timeout=1")
    try:
        reads = [store.read(ActorId("t.Frozen", k)) for k in range(10)]
        results = await bounded(
            asyncio.gather(*reads, return_exceptions=True), "the reads to give up", 20
        )
        assert all(isinstance(r, StorageError) and "unreachable" in str(r) for r in results)
        pending = asyncio.ensure_future(store.read(ActorId("t.Frozen", "last")))
        await asyncio.sleep(0.1)  # (its connection attempt under way)
        await bounded(store.aclose(), "closing the store", 4)
        with pytest.raises(StorageError):
            await pending
    finally:
        await store.aclose()
        for writer in held:
            writer.close()
        silent.close()
        await silent.wait_closed()


async def test_writes_queued_when_the_store_closes_are_committed(storage: PostgresStorage) -> None:
    """aclose lets queued writes finish, as documented: each batch after the close called
    open(), which refused (the store closed), so they failed as not written."""
    writes = [
        asyncio.ensure_future(storage.write(ActorId("t.Queued", k), b"x", None)) for k in range(600)
    ]
    await asyncio.sleep(0)  # (queued; the first batch about to start)
    await storage.aclose()
    outcomes = await asyncio.gather(*writes, return_exceptions=True)
    assert not [o for o in outcomes if isinstance(o, BaseException)]
