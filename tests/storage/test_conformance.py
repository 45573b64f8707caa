"""The contract every state storage provider keeps (see storage/_provider.py).

Each test runs once per provider; a new provider joins by adding a case to ``PROVIDERS``.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from raygrain.actors import ActorId, InconsistentStateError, StorageError
from raygrain.storage import (
    MemoryStorage,
    QueuedWrites,
    SqliteStorage,
    StateRecord,
    StateWrite,
    StorageProvider,
    TimedWrites,
    open_storage,
    read_many,
)
from tests.helpers import RemoteToInProcessServer

PROVIDERS: dict[str, Callable[[pytest.FixtureRequest, Path], StorageProvider]] = {
    "memory": lambda _, __: MemoryStorage(),
    "sqlite": lambda _, tmp: SqliteStorage(tmp / "state.db"),
    "remote": lambda _, tmp: RemoteToInProcessServer(f"sqlite:///{tmp / 'state.db'}"),
    # A real server (tests/conftest.py: RAYGRAIN_TEST_POSTGRES_DSN or a throwaway one), in a
    # schema of this test's own.
    "postgres": lambda request, _: open_storage(request.getfixturevalue("postgres_url")),
}

ALICE = ActorId("Account", "alice")
BOB = ActorId("Account", "bob")
CAROL = ActorId("Account", "carol")


@pytest.fixture(params=list(PROVIDERS), ids=list(PROVIDERS))
async def provider(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StorageProvider]:
    storage = PROVIDERS[request.param](request, tmp_path)
    try:
        yield storage
    finally:
        await storage.aclose()


async def test_provider_satisfies_protocol(provider: StorageProvider) -> None:
    # isinstance on a runtime-checkable protocol only sees names: compare each method's kind
    # (coroutine or not) and its parameters with the protocol's.
    assert isinstance(provider, StorageProvider)
    for name in ("read", "write", "clear", "write_many", "aclose"):
        wanted = getattr(StorageProvider, name)
        found = getattr(type(provider), name)
        assert inspect.iscoroutinefunction(found), f"{name} must be async"
        assert list(inspect.signature(found).parameters) == list(
            inspect.signature(wanted).parameters
        ), f"{type(provider).__name__}.{name}{inspect.signature(found)}"


async def test_read_missing_record(provider: StorageProvider) -> None:
    assert await provider.read(ALICE) == StateRecord(None, None)


async def test_write_then_read_round_trips(provider: StorageProvider) -> None:
    etag = await provider.write(ALICE, b"one", None)
    assert await provider.read(ALICE) == StateRecord(b"one", etag)
    etag2 = await provider.write(ALICE, b"two", etag)
    assert etag2 != etag
    assert await provider.read(ALICE) == StateRecord(b"two", etag2)
    assert await provider.read(BOB) == StateRecord(None, None)


async def test_empty_bytes_is_state_not_absence(provider: StorageProvider) -> None:
    etag = await provider.write(ALICE, b"", None)
    assert await provider.read(ALICE) == StateRecord(b"", etag)


async def test_stale_etag_is_refused(provider: StorageProvider) -> None:
    first = await provider.write(ALICE, b"one", None)
    second = await provider.write(ALICE, b"two", first)
    with pytest.raises(InconsistentStateError) as caught:
        await provider.write(ALICE, b"stale", first)
    assert caught.value.stored_etag == second
    assert caught.value.expected_etag == first
    assert await provider.read(ALICE) == StateRecord(b"two", second)


async def test_none_etag_when_record_exists_is_refused(provider: StorageProvider) -> None:
    etag = await provider.write(ALICE, b"one", None)
    with pytest.raises(InconsistentStateError) as caught:
        await provider.write(ALICE, b"again", None)
    assert (caught.value.stored_etag, caught.value.expected_etag) == (etag, None)
    assert await provider.read(ALICE) == StateRecord(b"one", etag)


async def test_etag_when_record_missing_is_refused(provider: StorageProvider) -> None:
    with pytest.raises(InconsistentStateError) as caught:
        await provider.write(ALICE, b"one", "1")
    assert (caught.value.stored_etag, caught.value.expected_etag) == (None, "1")
    assert await provider.read(ALICE) == StateRecord(None, None)


async def test_clear_leaves_a_tombstone(provider: StorageProvider) -> None:
    etag = await provider.write(ALICE, b"one", None)
    tombstone = await provider.clear(ALICE, etag)
    assert tombstone not in (None, etag)
    assert await provider.read(ALICE) == StateRecord(None, tombstone)


async def test_write_after_clear_needs_the_tombstone_etag(provider: StorageProvider) -> None:
    etag = await provider.write(ALICE, b"one", None)
    tombstone = await provider.clear(ALICE, etag)
    for stale in (None, etag):
        with pytest.raises(InconsistentStateError):
            await provider.write(ALICE, b"zombie", stale)
    revived = await provider.write(ALICE, b"two", tombstone)
    assert await provider.read(ALICE) == StateRecord(b"two", revived)


async def test_clear_with_stale_etag_is_refused(provider: StorageProvider) -> None:
    first = await provider.write(ALICE, b"one", None)
    second = await provider.write(ALICE, b"two", first)
    with pytest.raises(InconsistentStateError):
        await provider.clear(ALICE, first)
    assert await provider.read(ALICE) == StateRecord(b"two", second)


async def test_clear_of_missing_record_leaves_a_tombstone(provider: StorageProvider) -> None:
    tombstone = await provider.clear(ALICE, None)
    assert await provider.read(ALICE) == StateRecord(None, tombstone)
    with pytest.raises(InconsistentStateError):
        await provider.clear(ALICE, None)


async def test_concurrent_writers_with_same_etag_exactly_one_wins(
    provider: StorageProvider,
) -> None:
    base = await provider.write(ALICE, b"base", None)
    results = await asyncio.gather(
        *(provider.write(ALICE, f"writer {i}".encode(), base) for i in range(20)),
        return_exceptions=True,
    )
    winners = [(i, r) for i, r in enumerate(results) if isinstance(r, str)]
    losers = [r for r in results if not isinstance(r, str)]
    assert len(winners) == 1
    assert all(isinstance(r, InconsistentStateError) for r in losers)
    index, etag = winners[0]
    assert await provider.read(ALICE) == StateRecord(f"writer {index}".encode(), etag)


async def test_concurrent_creators_exactly_one_wins(provider: StorageProvider) -> None:
    results = await asyncio.gather(
        *(provider.write(ALICE, b"x", None) for _ in range(10)), return_exceptions=True
    )
    assert sum(isinstance(r, str) for r in results) == 1
    assert sum(isinstance(r, InconsistentStateError) for r in results) == 9


async def test_write_many_applies_all(provider: StorageProvider) -> None:
    alice = await provider.write(ALICE, b"a1", None)
    etags = await provider.write_many(
        [
            StateWrite(ALICE, b"a2", alice),
            StateWrite(BOB, b"b1", None),
            StateWrite(CAROL, None, None),
        ]
    )
    assert len(etags) == 3
    assert await provider.read(ALICE) == StateRecord(b"a2", etags[0])
    assert await provider.read(BOB) == StateRecord(b"b1", etags[1])
    assert await provider.read(CAROL) == StateRecord(None, etags[2])


async def test_write_many_is_all_or_nothing(provider: StorageProvider) -> None:
    alice = await provider.write(ALICE, b"a1", None)
    bob = await provider.write(BOB, b"b1", None)
    await provider.write(BOB, b"b2", bob)  # makes `bob` stale
    before = [await provider.read(actor) for actor in (ALICE, BOB, CAROL)]
    with pytest.raises(InconsistentStateError) as caught:
        await provider.write_many(
            [
                StateWrite(ALICE, b"a2", alice),
                StateWrite(BOB, b"b3", bob),
                StateWrite(CAROL, b"c1", None),
            ]
        )
    assert caught.value.expected_etag == bob
    assert [await provider.read(actor) for actor in (ALICE, BOB, CAROL)] == before


async def test_write_many_of_nothing(provider: StorageProvider) -> None:
    assert await provider.write_many([]) == []


async def test_large_value_round_trips(provider: StorageProvider) -> None:
    value = os.urandom(1024 * 1024)
    etag = await provider.write(ALICE, value, None)
    assert await provider.read(ALICE) == StateRecord(value, etag)
    bigger = value + os.urandom(1024 * 1024)
    etag = await provider.write(ALICE, bigger, etag)
    assert await provider.read(ALICE) == StateRecord(bigger, etag)


ODD_KEYS: list[str | int] = [
    "ключ",
    "鍵🔑",
    "a\x00b",
    "\x00",
    "",
    " ",
    "'; DROP TABLE raygrain_state; --",
    "\ud800 lone surrogate",
    "x" * 10_000,
    0,
    -1,
    2**70,
]


@pytest.mark.parametrize("key", ODD_KEYS, ids=[f"key{i}" for i in range(len(ODD_KEYS))])
async def test_odd_keys_are_distinct_records(provider: StorageProvider, key: str | int) -> None:
    actor = ActorId("Ünïcode\x00Type", key)
    etag = await provider.write(actor, repr(key).encode(), None)
    assert await provider.read(actor) == StateRecord(repr(key).encode(), etag)
    for other in ODD_KEYS:
        if other != key or type(other) is not type(key):
            assert (await provider.read(ActorId("Ünïcode\x00Type", other))).etag is None


async def test_int_and_str_keys_are_distinct(provider: StorageProvider) -> None:
    as_int, as_str = ActorId("Account", 1), ActorId("Account", "1")
    int_etag = await provider.write(as_int, b"int", None)
    assert await provider.read(as_str) == StateRecord(None, None)
    str_etag = await provider.write(as_str, b"str", None)
    assert await provider.read(as_int) == StateRecord(b"int", int_etag)
    assert await provider.read(as_str) == StateRecord(b"str", str_etag)


async def test_type_name_is_part_of_identity(provider: StorageProvider) -> None:
    await provider.write(ActorId("Account", "alice"), b"account", None)
    assert await provider.read(ActorId("Wallet", "alice")) == StateRecord(None, None)


async def test_closed_provider_raises_storage_error(provider: StorageProvider) -> None:
    etag = await provider.write(ALICE, b"one", None)
    await provider.aclose()
    await provider.aclose()  # idempotent
    with pytest.raises(StorageError):
        await provider.read(ALICE)
    with pytest.raises(StorageError):
        await provider.write(ALICE, b"two", etag)
    with pytest.raises(StorageError):
        await provider.clear(ALICE, etag)
    with pytest.raises(StorageError):
        await provider.write_many([StateWrite(BOB, b"b", None)])


async def test_read_many_reads_each_record_as_read_does(provider: StorageProvider) -> None:
    # (storage.read_many: one trip on a provider that ReadsMany, a read each on the others.)
    alice = await provider.write(ALICE, b"a", None)
    bob = await provider.clear(BOB, None)  # a tombstone: no data, an ETag
    many = [ActorId("Account", index) for index in range(1_200)]  # (past one query's ids)
    await provider.write_many([StateWrite(m, str(m.key).encode(), None) for m in many[::7]])
    ids = [CAROL, ALICE, BOB, ALICE, *many]
    records = await read_many(provider, ids)
    assert records[:4] == [
        StateRecord(None, None),
        StateRecord(b"a", alice),
        StateRecord(None, bob),
        StateRecord(b"a", alice),
    ]
    assert records == [await provider.read(actor_id) for actor_id in ids]
    assert await read_many(provider, []) == []


async def test_read_many_on_a_closed_provider_raises_storage_error(
    provider: StorageProvider,
) -> None:
    await provider.aclose()
    with pytest.raises(StorageError):
        await read_many(provider, [ALICE, BOB])


# -- queued writes (storage.QueuedWrites), for the providers that take them ----------------------


@pytest.fixture
def queued(provider: StorageProvider) -> QueuedWrites:
    if not isinstance(provider, QueuedWrites):
        pytest.skip(f"{type(provider).__name__} does not queue writes (QueuedWrites is optional)")
    return provider


def queue(
    provider: QueuedWrites, actor_id: ActorId, data: bytes, etag: str | None
) -> asyncio.Future[str | Exception]:
    """Queue a write; the future holds what ``done`` was given."""
    outcome: asyncio.Future[str | Exception] = asyncio.get_running_loop().create_future()
    provider.queue_write(actor_id, data, etag, outcome.set_result)
    assert not outcome.done()  # ``done`` never runs before queue_write returns
    return outcome


async def test_a_queued_write_keeps_the_write_contract(
    provider: StorageProvider, queued: QueuedWrites
) -> None:
    first = await queue(queued, ALICE, b"one", None)
    assert isinstance(first, str)
    assert await provider.read(ALICE) == StateRecord(b"one", first)
    second = await queue(queued, ALICE, b"two", first)
    assert isinstance(second, str) and second != first
    stale = await queue(queued, ALICE, b"stale", first)
    assert isinstance(stale, InconsistentStateError)
    assert (stale.stored_etag, stale.expected_etag) == (second, first)
    assert await provider.read(ALICE) == StateRecord(b"two", second)


async def test_concurrent_queued_writers_with_same_etag_exactly_one_wins(
    provider: StorageProvider, queued: QueuedWrites
) -> None:
    base = await provider.write(ALICE, b"base", None)
    outcomes = await asyncio.gather(*(queue(queued, ALICE, b"w%d" % i, base) for i in range(20)))
    winners = [(i, o) for i, o in enumerate(outcomes) if isinstance(o, str)]
    assert len(winners) == 1
    assert sum(isinstance(o, InconsistentStateError) for o in outcomes) == 19
    index, etag = winners[0]
    assert await provider.read(ALICE) == StateRecord(b"w%d" % index, etag)


class Stopwatch:
    """A ``WriteTimer`` keeping what it is told."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.failures: list[tuple[float, Exception]] = []

    def written(self, seconds: list[float]) -> None:
        self.seconds.extend(seconds)

    def failed(self, seconds: float, error: Exception) -> None:
        self.failures.append((seconds, error))

    def timed(self) -> int:
        return len(self.seconds) + len(self.failures)


async def test_a_timed_queued_write_tells_its_timer_before_its_callback(
    provider: StorageProvider,
) -> None:
    if not isinstance(provider, TimedWrites):
        pytest.skip(f"{type(provider).__name__} does not time queued writes (optional)")
    watch, other = Stopwatch(), Stopwatch()

    def queue_timed(
        timer: Stopwatch, actor_id: ActorId, data: bytes, etag: str | None
    ) -> asyncio.Future[tuple[str | Exception, int]]:
        """The outcome, and how many of its timer's writes were timed when it was told."""
        told: asyncio.Future[tuple[str | Exception, int]] = (
            asyncio.get_running_loop().create_future()
        )
        provider.queue_timed_write(
            timer, actor_id, data, etag, lambda outcome: told.set_result((outcome, timer.timed()))
        )
        return told

    base = await provider.write(ALICE, b"base", None)
    # Both timers' writes in one batch (most likely), a conflict among them.
    (one, timed_one), (stale, timed_stale), (bob, _), (_, _) = await asyncio.gather(
        queue_timed(watch, ALICE, b"one", base),
        queue_timed(watch, ALICE, b"stale", base),
        queue_timed(other, BOB, b"bob", None),
        queue_timed(other, CAROL, b"carol", None),
    )
    assert isinstance(one, str) and isinstance(bob, str)
    assert isinstance(stale, InconsistentStateError)
    assert await provider.read(ALICE) == StateRecord(b"one", one)
    assert len(watch.seconds) == 1 and [e for _, e in watch.failures] == [stale]
    assert len(other.seconds) == 2 and not other.failures
    assert all(0 <= s < 60 for s in [*watch.seconds, *other.seconds, watch.failures[0][0]])
    assert timed_one >= 1 and timed_stale >= 1  # each timed before its callback ran


class BrokenTimer:
    """A ``WriteTimer`` that raises (its owner's bug)."""

    def written(self, seconds: list[float]) -> None:
        raise RuntimeError("timer bug (written)")

    def failed(self, seconds: float, error: Exception) -> None:
        raise RuntimeError("timer bug (failed)")


async def test_a_timer_that_raises_still_lets_every_write_hear_its_outcome(
    provider: StorageProvider,
) -> None:
    if not isinstance(provider, TimedWrites):
        pytest.skip(f"{type(provider).__name__} does not time queued writes (optional)")
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    loop.set_exception_handler(lambda _, context: reported.append(str(context["exception"])))
    try:
        base = await provider.write(ALICE, b"base", None)
        told: list[asyncio.Future[str | Exception]] = [loop.create_future() for _ in range(3)]
        provider.queue_timed_write(BrokenTimer(), ALICE, b"one", base, told[0].set_result)
        provider.queue_timed_write(BrokenTimer(), ALICE, b"stale", base, told[1].set_result)
        provider.queue_timed_write(BrokenTimer(), BOB, b"bob", None, told[2].set_result)
        one, stale, bob = await asyncio.wait_for(asyncio.gather(*told), 30)
    finally:
        loop.set_exception_handler(None)
    assert isinstance(one, str) and isinstance(bob, str)
    assert isinstance(stale, InconsistentStateError)
    assert await provider.read(BOB) == StateRecord(b"bob", bob)
    assert "timer bug (failed)" in reported
    assert "timer bug (written)" in reported


async def test_closed_provider_refuses_a_queued_write(
    provider: StorageProvider, queued: QueuedWrites
) -> None:
    await provider.aclose()
    with pytest.raises(StorageError):
        queued.queue_write(ALICE, b"late", None, lambda outcome: None)
