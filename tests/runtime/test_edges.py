"""Guarantees at the edges: ten behaviours from Orleans' own test suite that once broke here
(issue 15). Each test failed before its fix; most run locally and on Ray (``any_cluster``)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from raygrain.actors import (
    ActorId,
    InconsistentStateError,
    InvalidCallError,
    SerializationError,
    TransactionAbortedError,
    TransactionInDoubtError,
    TurnCancelledError,
)
from raygrain.runtime import Cluster, TransactionSettings
from raygrain.runtime.kernel import _logging
from raygrain.storage import MemoryStorage, StateWrite
from tests import app, edge_app
from tests.app import BankAccount, Vault
from tests.edge_app import (
    Canceller,
    Grouper,
    Leaver,
    Proxy,
    SlowVault,
    Starter,
    StuckOnDeactivate,
    Typed,
)

Key = Callable[[str], str]

# -- 1. scheduling: queued calls start in arrival order -----------------------------------------


async def test_an_interleaving_call_queued_during_activation_does_not_block_an_earlier_call(
    any_cluster: Cluster, key: Key
) -> None:
    # Both calls reach a fresh actor while it activates (tasks send in the order they were
    # made). The plain call came first: it must start first, as it would on an active actor,
    # or the interleaving one waits for an event only the plain one sets while the plain one
    # waits behind it.
    actor = any_cluster.get(Starter, key("fresh")).with_timeout(10)
    long_call = asyncio.ensure_future(actor.long_method())
    started = asyncio.ensure_future(actor.wait_until_started())
    assert await started == "started"
    await actor.let_finish()
    assert await long_call == "done"


# -- 2. lifecycle: deactivate_on_idle -------------------------------------------------------------


async def test_a_call_queued_behind_deactivate_on_idle_goes_to_the_next_activation(
    any_cluster: Cluster, key: Key
) -> None:
    actor = any_cluster.get(Leaver, key("leaver")).with_timeout(10)
    latch = any_cluster.get(Starter, key("latch")).with_timeout(10)
    first = await actor.token_of()
    # In this order (tasks send in the order they were made): the leaving turn starts and
    # waits on the latch; the next call queues behind it; the latch opens, and the leaving
    # turn ends, with no other turn of the actor ending in between.
    leaving = asyncio.ensure_future(actor.leave_after(key("latch")))
    queued = asyncio.ensure_future(actor.token_of())
    opened = asyncio.ensure_future(latch.let_finish())
    assert await leaving == first
    await opened
    assert await queued != first  # served after on_deactivate, by a fresh activation


# -- 3. lifecycle: an on_deactivate that never returns -------------------------------------------


async def test_an_on_deactivate_that_never_returns_is_bounded(
    any_cluster: Cluster, key: Key
) -> None:
    actor = any_cluster.get(StuckOnDeactivate, key("stuck")).with_timeout(10)
    first = await actor.token_of()
    await actor.leave()
    # Served by the next activation once the deactivation timeout (0.5 s here) passed.
    assert await actor.token_of() != first


async def test_aclose_returns_although_an_on_deactivate_never_returns() -> None:
    cluster = Cluster.local(actors=app.ALL_ACTORS, deactivation_timeout=0.2)
    async with cluster:
        assert await cluster.get(StuckOnDeactivate, "a").token_of()
        closing = asyncio.ensure_future(cluster.aclose())
        await asyncio.wait_for(asyncio.shield(closing), 10)
    assert cluster.closed


# -- 4. a method raising CancelledError ----------------------------------------------------------


@pytest.mark.parametrize("method", ["cancel_at_once", "cancel_after_waiting"])
async def test_a_method_raising_cancelled_error_fails_the_call_not_the_caller(
    any_cluster: Cluster, key: Key, method: str
) -> None:
    actor = any_cluster.get(Canceller, key("canceller")).with_timeout(10)
    with pytest.raises(TurnCancelledError, match="CancelledError"):
        await actor.invoke(method, 5)
    me = asyncio.current_task()
    assert me is not None and not me.cancelling()  # the caller's task was not cancelled
    assert await actor.balance() == 0  # the turn rolled back like any failed turn


# -- 5. exception groups --------------------------------------------------------------------------


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception groups need Python 3.11")
async def test_an_exception_group_arrives_as_itself(any_cluster: Cluster, key: Key) -> None:
    actor = any_cluster.get(Grouper, key("grouper"))
    with pytest.raises(ExceptionGroup) as raised:  # noqa: F821
        await actor.raise_group()
    group = raised.value
    assert group.message == "outer"
    assert [type(e) for e in group.exceptions] == [ValueError, KeyError]
    assert str(group.exceptions[0]) == "x"
    with pytest.raises(ExceptionGroup) as raised:  # noqa: F821
        await actor.raise_nested_group()
    inner, value = raised.value.exceptions
    assert isinstance(inner, ExceptionGroup) and inner.message == "inner"  # noqa: F821
    assert isinstance(inner.exceptions[0], TypeError) and isinstance(value, ValueError)


# -- 6. an ETag conflict deactivates only the fenced activation ----------------------------------


async def test_a_fenced_write_deactivates_only_its_own_activation(cluster: Cluster) -> None:
    account = cluster.get(BankAccount, "fenced")
    proxy = cluster.get(Proxy, "proxy")
    assert await account.deposit(1) == 1
    token = await proxy.token_of()
    # Someone else writes the record: the account's activation is now a stale duplicate.
    storage = cluster.storage
    assert storage is not None
    target = ActorId(BankAccount.__actor_options__.name, "fenced")
    record = await storage.read(target)
    assert record.data is not None
    await storage.write(target, record.data, record.etag)
    with pytest.raises(InconsistentStateError):
        await proxy.relay(account, "deposit", 5)
    assert await proxy.token_of() == token  # the proxy's own state was never fenced
    assert await account.deposit(2) == 3  # the account reactivated from storage


# -- 7. a state that cannot be loaded back is refused --------------------------------------------


@pytest.mark.parametrize("method", ["set_none", "set_int"])
async def test_a_state_of_the_wrong_type_is_refused_at_commit(
    any_cluster: Cluster, key: Key, method: str
) -> None:
    actor = any_cluster.get(Typed, key("typed")).with_timeout(10)
    assert await actor.deposit(7) == 7
    with pytest.raises(SerializationError, match="declared state type"):
        await actor.invoke(method)
    balance, token = await actor.balance_and_token()
    assert balance == 7  # rolled back
    await actor.leave()
    balance, fresh = await actor.balance_and_token()  # a new activation loads what is stored
    assert (balance, fresh != token) == (7, True)


# -- 8. a commit whose outcome is unknown is not reported as aborted -----------------------------


class _UnreliableStore(MemoryStorage):
    """A store whose next multi-record write fails: after storing it (a lost reply), or before
    (a refused connection); and whose reads may fail too (a store gone away)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_next: str | None = None  # "after" or "before"
        self.reads_fail = False

    async def write_many(self, writes: Sequence[StateWrite]) -> list[str]:
        failing, self.fail_next = (self.fail_next, None) if len(writes) > 1 else (None, None)
        if failing == "before":
            raise ConnectionError("connection refused")
        etags = await super().write_many(writes)
        if failing == "after":
            raise ConnectionError("connection lost before the reply")
        return etags

    async def read(self, actor_id: ActorId) -> Any:
        if self.reads_fail:
            raise ConnectionError("connection refused")
        return await super().read(actor_id)


async def _seeded(store: _UnreliableStore) -> tuple[Cluster, Any, Any]:
    cluster = await Cluster.local(actors=app.ALL_ACTORS, storage=store).start()
    a, b = cluster.get(Vault, "a"), cluster.get(Vault, "b")
    await a.add(0, 100)
    await b.add(0, 0)
    return cluster, a, b


async def test_a_commit_stored_before_its_reply_was_lost_counts_once() -> None:
    store = _UnreliableStore()
    cluster, a, b = await _seeded(store)
    async with cluster:
        attempts = 0

        async def transfer() -> None:
            nonlocal attempts
            attempts += 1
            await a.add(1, -1)
            await b.add(1, 1)

        store.fail_next = "after"
        await cluster.transact(transfer, retries=3)
        assert attempts == 1  # read back as committed: not retried
        assert ((await a.ledger()).balance, (await b.ledger()).balance) == (99, 1)
        assert (await b.ledger()).applied == [0, 1]


async def test_a_commit_not_stored_is_aborted_and_retried() -> None:
    store = _UnreliableStore()
    cluster, a, b = await _seeded(store)
    async with cluster:
        attempts = 0

        async def transfer() -> None:
            nonlocal attempts
            attempts += 1
            await a.add(1, -1)
            await b.add(1, 1)

        store.fail_next = "before"
        await cluster.transact(transfer, retries=3)
        assert attempts == 2  # read back as not stored (and fenced): a safe retry
        assert ((await a.ledger()).balance, (await b.ledger()).balance) == (99, 1)


async def test_a_commit_whose_outcome_cannot_be_read_is_in_doubt_and_not_retried() -> None:
    store = _UnreliableStore()
    cluster, a, b = await _seeded(store)
    async with cluster:
        attempts = 0

        async def transfer() -> None:
            nonlocal attempts
            attempts += 1
            await a.add(1, -1)
            await b.add(1, 1)

        store.fail_next = "after"
        store.reads_fail = True
        with pytest.raises(TransactionInDoubtError, match="unknown"):
            await cluster.transact(transfer, retries=3)
        assert attempts == 1
        store.reads_fail = False
        # The participants reload what storage holds: here, the whole transfer.
        assert ((await a.ledger()).balance, (await b.ledger()).balance) == (99, 1)


# -- 9. calls a transaction block started and did not await ---------------------------------------


async def test_a_call_made_in_an_ended_transaction_fails_at_once(
    any_cluster: Cluster, key: Key
) -> None:
    a, b = any_cluster.get(Vault, key("a")), any_cluster.get(Vault, key("b"))
    async with any_cluster.transaction():
        await a.add(1, 5)
        stray = asyncio.ensure_future(b.add(1, 100))  # never awaited inside the block
    with pytest.raises(InvalidCallError, match="has ended"):
        await stray
    assert (await a.ledger()).balance == 5
    assert (await b.with_timeout(5).ledger()).balance == 0  # neither changed nor left locked


async def test_a_block_waits_for_the_calls_it_started_before_committing(cluster: Cluster) -> None:
    edge_app.GATES.clear()
    a, slow = cluster.get(Vault, "a"), cluster.get(SlowVault, "s")
    stray: list[asyncio.Future[Any]] = []

    async def block() -> None:
        async with cluster.transaction():
            await a.add(1, 5)
            stray.append(asyncio.ensure_future(slow.add_after("g", 100)))
            await edge_app.gate("g-entered").wait()  # the call is running at the actor

    ending = asyncio.ensure_future(block())
    await edge_app.gate("g-entered").wait()
    edge_app.gate("g").set()  # (the block has reached its end, or is about to)
    await ending
    assert await stray[0] == 100  # acknowledged, so it must be part of the commit
    assert await slow.with_timeout(5).balance() == 100
    assert (await a.ledger()).balance == 5


# -- 10. plain changing calls inside a transaction -----------------------------------------------


class _Recorded:
    """Stands in for raygrain's logger: keeps what was logged."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        return lambda event, **fields: self.events.append((level, event, fields))


async def test_a_plain_change_in_a_transaction_is_logged_once_per_method(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    logged = _Recorded()
    monkeypatch.setattr(_logging, "_logger", logged)
    a, b = cluster.get(Vault, "a"), cluster.get(Vault, "b")
    with pytest.raises(RuntimeError):
        async with cluster.transaction():
            await a.add(1, 5)
            await a.deposit(1)  # a is held by this transaction: the change is part of it
            await b.ledger()  # read-only: nothing to say
            await b.deposit(10)
            await b.deposit(10)
            raise RuntimeError("abort the block")
    warnings = [f for level, e, f in logged.events if e == "plain_change_in_transaction"]
    assert [(w["actor"], w["method"]) for w in warnings] == [(str(b.actor_id), "deposit")]
    # As documented: the plain calls' changes stayed although the block aborted.
    assert ((await a.ledger()).balance, (await b.ledger()).balance) == (0, 20)


async def test_plain_changes_in_a_transaction_can_be_refused() -> None:
    settings = TransactionSettings(refuse_plain_changes=True)
    async with Cluster.local(actors=app.ALL_ACTORS, transactions=settings) as cluster:
        a, b = cluster.get(Vault, "a"), cluster.get(Vault, "b")
        with pytest.raises(InvalidCallError, match="refuse_plain_changes"):
            async with cluster.transaction():
                await a.add(1, 5)
                await a.deposit(1)  # held by this transaction: allowed
                await b.deposit(10)
        assert ((await a.ledger()).balance, (await b.ledger()).balance) == (0, 0)
        assert await b.deposit(10) == 10  # outside a transaction, as ever


def test_transaction_errors_are_distinct() -> None:
    assert not issubclass(TransactionInDoubtError, TransactionAbortedError)
