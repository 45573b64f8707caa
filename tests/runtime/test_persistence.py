"""Transactional turns through the runtime: durable on return, no trace on raise, fenced
duplicates, explicit saves, schema evolution. Runs on every storage provider."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from raygrain.actors import (
    Actor,
    ActorId,
    DeactivationReason,
    InconsistentStateError,
    StateDecodeError,
    StorageError,
    TurnRolledBackError,
    decode_state,
    encode,
)
from raygrain.runtime import Cluster
from raygrain.storage import MemoryStorage, SqliteStorage, StorageProvider, open_storage
from tests import app
from tests.app import Account, BankAccount, Explicit
from tests.helpers import RemoteToInProcessServer, activation_of, still_pending, wait_until

PROVIDERS: dict[str, Callable[[pytest.FixtureRequest, Path], StorageProvider]] = {
    "memory": lambda _, __: MemoryStorage(),
    "sqlite": lambda _, tmp: SqliteStorage(str(tmp / "s.db")),
    # What silos on Ray use: RemoteStorage, with the storage server's body in this process.
    "remote": lambda _, tmp: RemoteToInProcessServer(f"sqlite:///{tmp / 's.db'}"),
    # A real server (tests/conftest.py), in a schema of this test's own.
    "postgres": lambda request, _: open_storage(request.getfixturevalue("postgres_url")),
}


@pytest.fixture(params=list(PROVIDERS))
async def provider(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StorageProvider]:
    store = PROVIDERS[request.param](request, tmp_path)
    yield store
    await store.aclose()


def _cluster(store: StorageProvider, **options: Any) -> Cluster:
    return Cluster.local(actors=app.ALL_ACTORS, silos=2, storage=store, **options)


async def _stored(store: StorageProvider, actor: Any) -> Account | None:
    record = await store.read(actor.actor_id)
    return None if record.data is None else decode_state(record.data, Account)


async def test_acknowledged_write_is_in_storage_before_the_reply(provider: StorageProvider) -> None:
    async with _cluster(provider) as cluster:
        alice = cluster.get(BankAccount, "alice")
        await alice.deposit(40)
        assert await _stored(provider, alice) == Account(40, [40])


async def test_state_survives_the_cluster(provider: StorageProvider) -> None:
    async with _cluster(provider) as cluster:
        await cluster.get(BankAccount, "bob").deposit(7)
    async with _cluster(provider) as again:
        assert await again.get(BankAccount, "bob").balance() == 7


async def test_raise_leaves_no_trace_in_memory_or_on_disk(provider: StorageProvider) -> None:
    async with _cluster(provider) as cluster:
        carol = cluster.get(BankAccount, "carol")
        await carol.deposit(10)
        with pytest.raises(RuntimeError, match="failed after changing state"):
            await carol.deposit_then_fail(1000)
        assert await carol.balance() == 10  # memory rolled back
        assert await _stored(provider, carol) == Account(10, [10])  # nothing written
        with pytest.raises(app.InsufficientFunds):
            await carol.withdraw(50)
        assert await carol.snapshot() == Account(10, [10])


async def test_read_only_and_unchanged_turns_do_not_write(provider: StorageProvider) -> None:
    async with _cluster(provider) as cluster:
        dave = cluster.get(BankAccount, "dave")
        await dave.deposit(1)
        etag = (await provider.read(dave.actor_id)).etag
        await dave.balance()
        await dave.snapshot()
        assert await dave.change_and_undo() == 1  # a changing method that leaves it equal
        assert (await provider.read(dave.actor_id)).etag == etag  # nothing written
        assert await dave.deposit(1) == 2
        assert (await provider.read(dave.actor_id)).etag != etag  # (a change is written)


async def test_explicit_persistence_writes_only_on_save(provider: StorageProvider) -> None:
    async with _cluster(provider) as cluster:
        eve = cluster.get(Explicit, "eve")
        await eve.add(5)
        record = await provider.read(eve.actor_id)
        assert record.data is None  # not saved yet
        await eve.add_and_save(1)
        assert decode_state((await provider.read(eve.actor_id)).data or b"", Account).balance == 6
    async with _cluster(provider) as again:
        assert await again.get(Explicit, "eve").balance() == 6


async def test_explicit_persistence_keeps_the_changes_of_a_raising_method(
    provider: StorageProvider,
) -> None:
    # Not a transactional turn: a method that raises is not rolled back; nothing is written.
    async with _cluster(provider) as cluster:
        eve = cluster.get(Explicit, "raiser")
        await eve.add_and_save(5)
        with pytest.raises(RuntimeError, match="failed after changing state"):
            await eve.add_then_fail(3)
        assert await eve.balance() == 8
        assert await _stored(provider, eve) == Account(5, [])
        await eve.save_now()
        assert await _stored(provider, eve) == Account(8, [])


async def test_explicit_persistence_loses_unsaved_changes_on_deactivation(
    provider: StorageProvider,
) -> None:
    async with _cluster(provider) as cluster:
        eve = cluster.get(Explicit, "forgetful")
        await eve.add_and_save(5)
        assert await eve.add(3) == 8  # never saved
        await eve.leave()
        await wait_until(
            lambda: not any(eve.actor_id in s.activations for s in cluster.silos),
            "the activation to deactivate",
        )
        assert await eve.balance() == 5


async def test_explicit_persistence_a_stale_save_is_fenced(provider: StorageProvider) -> None:
    async with _cluster(provider) as first, _cluster(provider) as second:
        one, two = first.get(Explicit, "stale"), second.get(Explicit, "stale")
        await one.add_and_save(1)
        assert await two.balance() == 1  # both activations hold the same etag
        await one.add_and_save(10)
        with pytest.raises(InconsistentStateError):
            await two.add_and_save(100)  # saves on top of the state it loaded: stale
        assert await _stored(provider, one) == Account(11, [])
        assert await two.balance() == 11  # the fenced activation was dropped; reloaded


async def test_clear_state_resets_and_leaves_a_tombstone(provider: StorageProvider) -> None:
    async with _cluster(provider) as cluster:
        frank = cluster.get(Explicit, "frank")
        await frank.add_and_save(9)
        await frank.wipe()
        assert await frank.balance() == 0
        record = await provider.read(frank.actor_id)
        assert record.data is None and record.etag is not None
        await frank.add_and_save(2)  # writes on top of the tombstone
    async with _cluster(provider) as again:
        assert await again.get(Explicit, "frank").balance() == 2


async def test_split_brain_stale_duplicate_is_fenced_and_deactivated(
    provider: StorageProvider,
) -> None:
    # Two clusters on one store force two activations of the same actor.
    async with _cluster(provider) as first, _cluster(provider) as second:
        one, two = first.get(BankAccount, "gina"), second.get(BankAccount, "gina")
        await one.deposit(1)
        assert await two.balance() == 1  # both activations now hold etag 1
        await one.deposit(10)  # etag 2
        with pytest.raises(InconsistentStateError) as info:
            await two.deposit(100)  # stale: expected etag 1
        assert info.value.expected_etag != info.value.stored_etag
        assert await _stored(provider, one) == Account(11, [1, 10])  # the stale write lost
        # The stale activation was dropped; the next call reactivates from storage.
        assert await two.balance() == 11
        assert await two.deposit(100) == 111


async def test_a_fenced_activation_is_deactivated_with_the_inconsistent_state_reason(
    provider: StorageProvider,
) -> None:
    async with _cluster(provider) as first, _cluster(provider) as second:
        one, two = first.get(app.Recorder, "fenced"), second.get(app.Recorder, "fenced")
        await one.record("1")
        assert await two.entries() == ["start 1", "end 1"]  # a second activation, etag 1
        await one.record("2")
        with pytest.raises(InconsistentStateError):
            await two.record("3")
        fenced = ("deactivate", ("fenced", DeactivationReason.INCONSISTENT_STATE))
        await wait_until(lambda: fenced in app.EVENTS, "the fenced activation's on_deactivate")
        assert app.EVENTS.count(fenced) == 1  # the other activation serves on
        assert await one.entries() == ["start 1", "end 1", "start 2", "end 2"]


async def test_state_schema_evolution_loads_old_records(provider: StorageProvider) -> None:
    @dataclasses.dataclass
    class WalletV2:
        balance: int = 0
        currency: str = "EUR"

    class Wallet(Actor[WalletV2], name="test.Wallet"):
        async def read(self) -> tuple[int, str]:
            return self.state.balance, self.state.currency

    # A record written by an older version: a field map without 'currency', plus a removed one.
    await provider.write(ActorId("test.Wallet", "w"), encode({"balance": 3, "legacy": 1}), None)
    async with Cluster.local(actors=[Wallet], storage=provider) as cluster:
        assert await cluster.get(Wallet, "w").read() == (3, "EUR")


async def test_undecodable_record_is_a_clear_error_and_the_silo_serves_on(
    provider: StorageProvider,
) -> None:
    await provider.write(ActorId("test.BankAccount", "bad"), b"\xc1 not msgpack", None)
    async with _cluster(provider) as cluster:
        with pytest.raises(StateDecodeError, match="test.BankAccount/bad"):
            await cluster.get(BankAccount, "bad").balance()
        assert await cluster.get(BankAccount, "good").deposit(1) == 1
        # The record is still there, untouched, for an operator to inspect.
        assert (await provider.read(ActorId("test.BankAccount", "bad"))).data == b"\xc1 not msgpack"


async def test_unserializable_state_rolls_back_the_turn() -> None:
    class Holder(Actor[Account], name="test.Holder"):
        async def put_bad(self) -> None:
            self.state.history.append(object())  # type: ignore[arg-type]

        async def balance(self) -> int:
            return len(self.state.history)

    async with Cluster.local(actors=[Holder]) as cluster:
        from raygrain.actors import SerializationError

        with pytest.raises(SerializationError, match="state of test.Holder/h"):
            await cluster.get(Holder, "h").put_bad()
        assert await cluster.get(Holder, "h").balance() == 0


class Tally(Actor[dict[str, int]], name="test.Tally"):
    """A state declared as a generic alias (dict[str, int]): checked as a dict."""

    async def add(self, name: str) -> int:
        self.state[name] = self.state.get(name, 0) + 1
        return self.state[name]

    async def reset_to_none(self) -> None:
        self.state = None  # type: ignore[assignment]


async def test_a_state_declared_as_a_generic_alias_is_checked_by_its_origin(
    tmp_path: Path,
) -> None:
    # Stored, a None could never be loaded back as a dict: refused in the turn, rolled back
    # (it used to be stored, and every call after a restart failed with an AttributeError).
    store = f"sqlite:///{tmp_path / 'tally.db'}"
    async with Cluster.local(actors=[Tally], storage=store) as cluster:
        tally = cluster.get(Tally, "t")
        assert await tally.add("a") == 1
        from raygrain.actors import SerializationError

        with pytest.raises(SerializationError, match="must be a dict"):
            await tally.reset_to_none()
        assert await tally.add("a") == 2
    async with Cluster.local(actors=[Tally], storage=store) as cluster:
        assert await cluster.get(Tally, "t").add("a") == 3


async def test_storage_url_strings(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'url.db'}"
    async with Cluster.local(actors=[BankAccount], storage=url) as cluster:
        await cluster.get(BankAccount, "u").deposit(3)
    async with Cluster.local(actors=[BankAccount], storage=url) as cluster:
        assert await cluster.get(BankAccount, "u").balance() == 3
    async with Cluster.local(actors=[BankAccount], storage="memory://") as cluster:
        assert await cluster.get(BankAccount, "u").balance() == 0


async def test_a_one_way_turn_commits_its_state(provider: StorageProvider) -> None:
    async with _cluster(provider) as cluster:
        recorder = cluster.get(app.Recorder, "one-way")
        await recorder.fire("a")
        # A read-only turn waits for the changing one, and so for its commit.
        assert await recorder.entries() == ["fired a"]
        record = await provider.read(recorder.actor_id)
        assert record.data is not None and decode_state(record.data, app.Log).entries == ["fired a"]


async def test_interleaved_turns_that_change_state_all_commit(provider: StorageProvider) -> None:
    # Each turn's write waits for the one before it (an activation's writes take turns), and
    # on SQLite the first of them is queued without a task waiting for it.
    async with _cluster(provider) as cluster:
        actor = cluster.get(app.Reentrant, "many-writers")
        tags = [f"t{i}" for i in range(20)]
        await asyncio.gather(*(actor.append(tag) for tag in tags))
        assert sorted(await actor.entries()) == sorted(tags)
        record = await provider.read(actor.actor_id)
        assert record.data is not None
        assert sorted(decode_state(record.data, app.Log).entries) == sorted(tags)
    async with _cluster(provider) as again:
        assert sorted(await again.get(app.Reentrant, "many-writers").entries()) == sorted(tags)


async def test_a_turn_whose_changes_an_interleaved_failure_rolled_back_fails_too(
    provider: StorageProvider,
) -> None:
    async with _cluster(provider) as cluster:
        actor = cluster.get(app.Reentrant, "overlap")
        await actor.append("kept")
        hit = asyncio.ensure_future(actor.append_then_wait("b", "overlap-b"))
        await wait_until(lambda: "overlap-b" in app.GATES, "b to wait on its gate")
        assert await actor.entries() == ["kept", "b"]
        with pytest.raises(RuntimeError, match="a failed"):
            await actor.append_then_fail("a")  # rolls the shared state back: b's change goes
        later = asyncio.ensure_future(actor.append_then_wait("c", "overlap-c"))
        await wait_until(lambda: "overlap-c" in app.GATES, "c to wait on its gate")
        assert await actor.entries() == ["kept", "c"]
        app.gate("overlap-b").set()
        # Not acknowledged: its change was discarded. (It once returned 2, as if stored.)
        with pytest.raises(TurnRolledBackError, match="Reentrant/overlap.append_then_wait"):
            await hit
        # b's failure rolls nothing back again, so c, which started after the rollback, keeps
        # its change and commits it.
        app.gate("overlap-c").set()
        assert await later == 2
        assert await actor.entries() == ["kept", "c"]
        record = await provider.read(actor.actor_id)
        assert record.data is not None
        assert decode_state(record.data, app.Log).entries == ["kept", "c"]


async def test_a_rollback_keeps_the_changes_of_a_write_under_way(tmp_path: Path) -> None:
    # Turn t's write waits for the file's lock when an interleaved turn fails. Rolling back to
    # the last committed state dropped t's change from memory although its write then
    # committed and t was told it succeeded; the next write then lost it on disk too.
    path = tmp_path / "s.db"
    async with SqliteStorage(path, busy_timeout=30.0) as store, _cluster(store) as cluster:
        actor = cluster.get(app.Reentrant, "in-flight")
        await actor.append("kept")
        silo = next(s for s in cluster.silos if actor.actor_id in s.activations)
        activation = silo.activations[actor.actor_id]
        with _write_lock(path):
            written = asyncio.ensure_future(actor.append("t"))
            # (white-box: t's write is under way)
            await wait_until(lambda: activation.slot.writing, "t's write to start")
            with pytest.raises(RuntimeError, match="v failed"):
                await actor.append_then_fail("v")
            assert await actor.entries() == ["kept", "t"]
        assert await written == 2
        assert await actor.append("after") == 3
        record = await store.read(actor.actor_id)
        assert record.data is not None
        assert decode_state(record.data, app.Log).entries == ["kept", "t", "after"]


@pytest.mark.parametrize("passes", range(4))
async def test_a_write_never_overwrites_a_newer_acknowledged_one(
    tmp_path: Path, passes: int
) -> None:
    # A reentrant actor: turn a's write is under way, turn b waits for it, and turn d ends
    # `passes` loop passes after a's commit, racing b for the next write. Whatever the order,
    # the last write must hold every acknowledged change: b's encoding, made before d changed
    # the state, once overwrote d's acknowledged write.
    store = SqliteStorage(tmp_path / "s.db")

    class Racer(Actor[app.Log], name="test.Racer", reentrant=True):
        async def add(self, tag: str) -> None:
            self.state.entries.append(tag)

        async def add_after_commit(self, tag: str, commits: int) -> None:
            await wait_until(lambda: store.commits >= commits, f"commit {commits}")
            for _ in range(passes):
                await asyncio.sleep(0)
            self.state.entries.append(tag)

    async with store, Cluster.local(actors=[Racer], silos=1, storage=store) as cluster:
        racer = cluster.get(Racer, "r")
        await racer.add("first")
        commits = store.commits
        a = asyncio.ensure_future(racer.add("a"))
        await asyncio.sleep(0)
        await asyncio.gather(a, racer.add("b"), racer.add_after_commit("d", commits + 1))
        record = await store.read(racer.actor_id)
        assert record.data is not None
        assert sorted(decode_state(record.data, app.Log).entries) == ["a", "b", "d", "first"]


@contextlib.contextmanager
def _write_lock(path: Path) -> Iterator[None]:
    """Another connection holding the file's write lock (readers go on: WAL)."""
    locker = sqlite3.connect(path, isolation_level=None)
    try:
        locker.execute("BEGIN IMMEDIATE")
        yield
        locker.execute("ROLLBACK")
    finally:
        locker.close()


async def test_a_turn_holds_its_actor_until_its_write_commits(tmp_path: Path) -> None:
    async with (
        SqliteStorage(tmp_path / "s.db", busy_timeout=30.0) as store,
        _cluster(store) as cluster,
    ):
        account = cluster.get(BankAccount, "held")
        await account.deposit(1)
        with _write_lock(tmp_path / "s.db"):
            deposit = asyncio.ensure_future(account.deposit(10))
            balance = asyncio.ensure_future(account.balance())
            # Neither can finish while the write waits for the lock: the deposit is not
            # acknowledged, and the read must not run before the turn it queued behind ends.
            activation = activation_of(cluster, account)
            await wait_until(lambda: activation.slot.writing, "the deposit's write to start")
            await wait_until(lambda: bool(activation.mailbox), "the read to queue behind it")
            assert await still_pending(asyncio.gather(deposit, balance))
        assert await deposit == 11
        assert await balance == 11
        assert await _stored(store, account) == Account(11, [1, 10])


async def test_a_commit_that_fails_rolls_its_turn_back_and_the_actor_serves_on(
    tmp_path: Path,
) -> None:
    async with (
        SqliteStorage(tmp_path / "s.db", busy_timeout=0.2) as store,
        _cluster(store) as cluster,
    ):
        account = cluster.get(BankAccount, "unlucky")
        await account.deposit(1)
        with _write_lock(tmp_path / "s.db"), pytest.raises(StorageError, match="locked"):
            await account.deposit(10)
        assert await account.snapshot() == Account(1, [1])  # memory rolled back
        assert await _stored(store, account) == Account(1, [1])
        assert await account.deposit(5) == 6
        assert await _stored(store, account) == Account(6, [1, 5])


Make = Callable[[], Any]


async def test_turns_that_wait_start_on_runners_and_eager_starts_come_back() -> None:
    # (White-box: the start heuristic of Activation.enqueue.) A changing turn that waits for its
    # commit makes the next ones start on runner tasks, for a window that doubles while the
    # eager tries keep waiting; once a try does not wait, every turn starts eagerly again.
    # Whatever the heuristic does, no deposit may be lost.
    store = MemoryStorage(latency=0.001)
    async with _cluster(store) as cluster:
        account = cluster.get(BankAccount, "heuristic")
        assert await account.balance() == 0  # activated, idle
        silo = next(s for s in cluster.silos if account.actor_id in s.activations)
        activation = silo.activations[account.actor_id]
        await account.deposit(1)  # an eager try that waits
        assert (activation._lazy_window, activation._lazy_starts) == (15, 15)
        for _ in range(15 + 1):  # the window, then an eager try that waits again
            await account.deposit(1)
        assert (activation._lazy_window, activation._lazy_starts) == (31, 31)
        store.latency = 0.0  # turns no longer wait
        for _ in range(31 + 1):  # the window, then an eager try that does not wait
            await account.deposit(1)
        assert (activation._lazy_window, activation._lazy_starts) == (0, 0)
        assert await account.deposit(1) == 1 + 16 + 32 + 1
        assert await account.balance() == 50
