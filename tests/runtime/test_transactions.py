"""Multi-actor transactions: atomic commit, rollback on any failure, wait-die conflicts, lock
and lease timeouts, and bad input. Each runs on an in-process cluster and on Ray silos."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from raygrain.actors import (
    Actor,
    ActorCallTimeout,
    ConfigurationError,
    InvalidCallError,
    SerializationError,
    TransactionAbortedError,
    decode_state,
    read_only,
    transactional,
)
from raygrain.runtime import Cluster, TransactionSettings
from raygrain.storage import MemoryStorage
from tests import app
from tests.app import InsufficientFunds, Vault
from tests.helpers import activation_of, bounded, still_pending, wait_until


async def _ledgers(cluster: Cluster, *refs: Any) -> list[tuple[int, list[int]]]:
    found = await asyncio.gather(*(r.ledger() for r in refs))
    return [(f.balance, f.applied) for f in found]


async def test_a_transfer_in_a_block_commits_both_sides(any_cluster: Cluster, key: Any) -> None:
    a, b = any_cluster.get(Vault, key("a")), any_cluster.get(Vault, key("b"))
    await a.deposit(100)
    async with any_cluster.transaction() as tx:
        await a.add(1, -30)
        await b.add(1, 30)
    assert tx.participants == {a.actor_id, b.actor_id}
    assert await _ledgers(any_cluster, a, b) == [(70, [1]), (30, [1])]


async def test_an_exception_leaving_the_block_keeps_no_change(
    any_cluster: Cluster, key: Any
) -> None:
    a, b = any_cluster.get(Vault, key("a")), any_cluster.get(Vault, key("b"))
    await a.deposit(100)
    with pytest.raises(KeyError):
        async with any_cluster.transaction():
            await a.add(1, -30)
            await b.add(1, 30)
            raise KeyError("changed my mind")
    assert await _ledgers(any_cluster, a, b) == [(100, []), (0, [])]
    async with any_cluster.transaction():  # both unlocked again
        await b.add(2, 5)
    assert await b.ledger() == app.Ledger(5, [2])


async def test_an_overdraft_raises_the_users_error_and_aborts_cleanly(
    any_cluster: Cluster, key: Any
) -> None:
    a, b = any_cluster.get(Vault, key("a")), any_cluster.get(Vault, key("b"))
    await a.deposit(10)
    with pytest.raises(InsufficientFunds) as raised:
        async with any_cluster.transaction():
            await b.add(1, 50)  # credited first...
            await a.add(1, -50)  # ...then the debit fails
    assert raised.value.available == 10
    assert await _ledgers(any_cluster, a, b) == [(10, []), (0, [])]


async def test_a_transactional_method_starts_and_commits_its_own_transaction(
    any_cluster: Cluster, key: Any
) -> None:
    a, b = any_cluster.get(Vault, key("a")), any_cluster.get(Vault, key("b"))
    await a.deposit(100)
    await a.transfer_to(key("b"), 7, 60)
    assert await _ledgers(any_cluster, a, b) == [(40, [7]), (60, [7])]
    with pytest.raises(InsufficientFunds):
        await a.transfer_to(key("b"), 8, 60)  # the debit fails
    with pytest.raises(InsufficientFunds):
        await b.transfer_to(key("a"), 9, -100)  # the credit (a debit of a) fails after it
    assert await _ledgers(any_cluster, a, b) == [(40, [7]), (60, [7])]


async def test_a_failing_participant_aborts_the_whole_transaction(
    any_cluster: Cluster, key: Any
) -> None:
    a, b = any_cluster.get(Vault, key("a")), any_cluster.get(Vault, key("b"))
    # The caller catches the participant's error and tries to commit anyway: the commit
    # must abort, since b rolled its part back.
    # (Orleans' AbortTransactionExceptionInnerExceptionOnlyContainsOneRootCauseException: the
    # abort names the error that caused it.)
    with pytest.raises(TransactionAbortedError, match="could not prepare: .* raised RuntimeError"):
        async with any_cluster.transaction():
            await a.add(1, 10)
            with pytest.raises(RuntimeError):
                await b.add_then_fail(1, 10)
    assert await _ledgers(any_cluster, a, b) == [(0, []), (0, [])]


async def test_calls_nest_into_one_transaction(any_cluster: Cluster, key: Any) -> None:
    a, b, c = (any_cluster.get(Vault, key(n)) for n in "abc")
    await a.deposit(100)
    async with any_cluster.transaction() as outer:
        async with any_cluster.transaction() as inner:  # joins, does not nest
            await a.transfer_to(key("b"), 1, 10)  # a @transactional call joins too
        assert inner is outer
        await c.add(1, 1)
    assert outer.participants == {a.actor_id, b.actor_id, c.actor_id}
    assert await _ledgers(any_cluster, a, b, c) == [(90, [1]), (10, [1]), (1, [1])]


async def test_a_joined_block_that_raises_dooms_the_transaction_it_joined(
    any_cluster: Cluster, key: Any
) -> None:
    # A helper that is atomic on its own (its own block) raises inside an enclosing block,
    # which catches the error: the helper's changes are part of the enclosing transaction, so
    # that transaction aborts as a whole. (The helper's credit used to commit.)
    a, b = any_cluster.get(Vault, key("a")), any_cluster.get(Vault, key("b"))
    await a.deposit(100)

    async def credit_then_fail() -> None:
        async with any_cluster.transaction():
            await b.add(1, 10)
            raise ValueError("the second account is closed")

    with pytest.raises(TransactionAbortedError, match="joined to it raised ValueError"):
        async with any_cluster.transaction():
            await a.add(1, -10)
            try:
                await credit_then_fail()
            except ValueError:
                pass
    assert await _ledgers(any_cluster, a, b) == [(100, []), (0, [])]
    async with any_cluster.transaction():  # both unlocked again
        await a.add(2, -10)
        await b.add(2, 10)
    assert await _ledgers(any_cluster, a, b) == [(90, [2]), (10, [2])]


async def test_transact_refuses_what_it_cannot_run(cluster: Cluster) -> None:
    async def body() -> int:
        return 1

    for bad, error, match in (
        (dict(retries=True), ConfigurationError, "retries must be an int"),
        (dict(backoff=float("nan")), ConfigurationError, "backoff must be a finite number"),
        (dict(backoff=float("inf")), ConfigurationError, "backoff must be a finite number"),
        (dict(backoff=-1), ConfigurationError, "backoff must be a finite number"),
        (dict(backoff="x"), ConfigurationError, "backoff must be a finite number"),
    ):
        with pytest.raises(error, match=match):
            await cluster.transact(body, **bad)  # type: ignore[arg-type]
    running = body()
    with pytest.raises(InvalidCallError, match="not its call"):
        await cluster.transact(running)  # type: ignore[arg-type]
    assert running.cr_frame is None, "the coroutine handed in should be closed, not leaked"
    for not_async in (None, lambda: 5):
        with pytest.raises(InvalidCallError, match="pass an async function"):
            await cluster.transact(not_async)  # type: ignore[arg-type]
    assert await cluster.transact(body, retries=0, backoff=0) == 1


def _set_aside(cluster: Cluster, actor: Any) -> Callable[[], bool]:
    """(White-box, in-process:) whether a call is set aside on ``actor``'s transaction lock."""

    def check() -> bool:
        return bool(getattr(activation_of(cluster, actor).guard, "blocked", None))

    return check


async def test_a_plain_call_waits_for_the_transaction_holding_the_actor(cluster: Cluster) -> None:
    a = cluster.get(Vault, "a")
    async with cluster.transaction():
        await a.add(1, 10)
        outside = asyncio.ensure_future(_outside_transaction(a.deposit(5)))
        await wait_until(_set_aside(cluster, a), "the plain call to reach the locked actor")
        assert await still_pending(outside), "a plain call must not see or change locked state"
        assert await a.ledger() == app.Ledger(10, [1])  # the transaction sees its own change
    assert await outside == 15  # ran after the commit, on the committed state
    assert await a.ledger() == app.Ledger(15, [1])


async def test_an_outside_read_only_call_never_sees_uncommitted_state(cluster: Cluster) -> None:
    a = cluster.get(Vault, "a")
    await a.deposit(5)
    with pytest.raises(KeyError):
        async with cluster.transaction():
            await a.add(1, 10)  # uncommitted, and about to abort
            reading = asyncio.ensure_future(_outside_transaction(a.ledger()))
            await wait_until(_set_aside(cluster, a), "the read to reach the locked actor")
            assert await still_pending(reading)
            raise KeyError("abort")
    assert await reading == app.Ledger(5, [])  # the committed state; the change never was


async def test_a_younger_transaction_gives_up_after_the_lock_timeout_naming_the_holder() -> None:
    from raygrain.runtime.transactions import TransactionContext, current_transaction

    settings = TransactionSettings(lock_timeout=0.3)
    async with Cluster.local(actors=[Vault], transactions=settings) as cluster:
        a = cluster.get(Vault, "a")
        older = TransactionContext.new()
        current_transaction.set(older)
        await a.add(1, 1)  # the older one holds a and never ends (its lease is 30 s)
        current_transaction.set(TransactionContext.new())  # younger: it waits, then gives up
        with pytest.raises(TransactionAbortedError, match=f"locked by {older.txid} over 0.3 s"):
            await bounded(a.add(2, 2), "the younger transaction's lock wait to end")
        current_transaction.set(older)
        await cluster._end_transaction(older, commit=False)
        current_transaction.set(None)
        assert await a.ledger() == app.Ledger(0, [])


async def test_a_participant_that_never_hears_the_decision_reloads_it_from_storage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The commit is written, but the message telling the participant is lost: once its
    # decision timeout runs out it reloads from storage, which holds the outcome.
    from raygrain.runtime.transactions import TX_COMMIT, Coordinator

    send = Coordinator._send
    monkeypatch.setattr(
        Coordinator,
        "_send",
        lambda self, target, method, *args: (
            None if method == TX_COMMIT else send(self, target, method, *args)
        ),
    )
    settings = TransactionSettings(decision_timeout=0.3)
    async with Cluster.local(actors=[Vault], silos=1, transactions=settings) as cluster:
        a = cluster.get(Vault, "a")
        async with cluster.transaction():
            await a.add(1, 10)
        assert await _stored_ledger(cluster, a) == app.Ledger(10, [1])  # committed
        # Still locked (prepared, undecided): a plain call waits for the reload, then runs
        # on the committed state.
        assert await bounded(a.deposit(1), "the reload after the decision timeout") == 11
        assert await a.ledger() == app.Ledger(11, [1])


async def _stored_ledger(cluster: Cluster, actor: Any) -> app.Ledger | None:
    assert cluster.storage is not None
    record = await cluster.storage.read(actor.actor_id)
    return None if record.data is None else decode_state(record.data, app.Ledger)


async def test_a_result_that_cannot_be_encoded_rolls_the_turn_back(cluster: Cluster) -> None:
    vault = cluster.get(Vault, "unencodable")
    with pytest.raises(SerializationError, match="result of test.Vault.add_returning_object"):
        await vault.add_returning_object(1, 10)  # its own transaction
    assert await vault.ledger() == app.Ledger(0, [])
    account = cluster.get(app.BankAccount, "unencodable")
    with pytest.raises(SerializationError, match="result of test.BankAccount.deposit_return"):
        await account.deposit_returning_object(10)  # a plain turn
    assert await account.balance() == 0
    assert await account.deposit(1) == 1


async def _outside_transaction(call: Any) -> Any:
    from raygrain.runtime.transactions import current_transaction

    current_transaction.set(None)  # this task was copied from inside the block
    return await call


async def test_wound_wait_the_older_transaction_commits_and_the_younger_aborts(
    cluster: Cluster,
) -> None:
    any_cluster = cluster
    a, b = cluster.get(Vault, "a"), cluster.get(Vault, "b")
    older_has_a, younger_has_b, younger_asked_a = (asyncio.Event() for _ in range(3))

    async def older() -> None:
        async with any_cluster.transaction():
            await a.add(1, 1)
            older_has_a.set()
            await younger_has_b.wait()
            await younger_asked_a.wait()
            await b.add(1, 1)  # a cycle: the older takes b from the younger

    async def younger() -> None:
        await older_has_a.wait()
        async with any_cluster.transaction():
            await b.add(2, 2)
            younger_has_b.set()
            asking = asyncio.ensure_future(a.add(2, 2))  # waits for the older one
            await wait_until(_set_aside(cluster, a), "the younger one's call to wait on a")
            younger_asked_a.set()
            await asking

    results = await asyncio.gather(older(), younger(), return_exceptions=True)
    assert results[0] is None, results
    assert isinstance(results[1], TransactionAbortedError), results
    assert "no longer holds" in str(results[1])
    assert await _ledgers(any_cluster, a, b) == [(1, [1]), (1, [1])]


async def test_retry_helper_runs_an_aborted_transaction_again(
    any_cluster: Cluster, key: Any
) -> None:
    a, b = any_cluster.get(Vault, key("a")), any_cluster.get(Vault, key("b"))
    await a.deposit(1000)
    transfer_ids = iter(range(1, 1000))

    async def transfer() -> None:
        n = next(transfer_ids)
        await a.add(n, -1)
        await b.add(n, 1)

    await asyncio.gather(*(any_cluster.transact(transfer, retries=50) for _ in range(20)))
    (balance_a, applied_a), (balance_b, applied_b) = await _ledgers(any_cluster, a, b)
    assert (balance_a, balance_b) == (980, 20)
    assert applied_a == applied_b, "both sides applied the same transfers in the same order"
    with pytest.raises(ConfigurationError, match="retries"):
        await any_cluster.transact(transfer, retries=-1)


async def test_an_unserializable_state_aborts_at_prepare(any_cluster: Cluster, key: Any) -> None:
    a, b = any_cluster.get(Vault, key("a")), any_cluster.get(Vault, key("b"))
    with pytest.raises(TransactionAbortedError, match="could not prepare"):
        async with any_cluster.transaction():
            await b.add(1, 5)
            await a.hold_unserializable()
    assert await _ledgers(any_cluster, a, b) == [(0, []), (0, [])]


async def test_clearing_state_inside_a_transaction_is_refused_and_aborts_it(
    any_cluster: Cluster, key: Any
) -> None:
    a = any_cluster.get(Vault, key("a"))
    await a.deposit(5)
    with pytest.raises(InvalidCallError, match="clear_state"):
        async with any_cluster.transaction():
            await a.add(1, 1)
            await a.wipe()
    assert await a.ledger() == app.Ledger(5, [])


async def test_an_older_transaction_gives_up_after_the_lock_timeout(key: Any) -> None:
    settings = TransactionSettings(lock_timeout=0.3)
    async with Cluster.local(actors=[Vault], transactions=settings) as cluster:
        a = cluster.get(Vault, key("a"))
        from raygrain.runtime.transactions import TransactionContext, current_transaction

        older = TransactionContext.new()  # older: started first, used second
        younger_holds = asyncio.Event()
        release = asyncio.Event()

        async def younger() -> None:
            async with cluster.transaction():
                await a.add(2, 2)
                younger_holds.set()
                await release.wait()

        holder = asyncio.ensure_future(younger())
        await younger_holds.wait()
        current_transaction.set(older)
        with pytest.raises(TransactionAbortedError, match="over 0.3 s"):
            await a.add(1, 1)
        current_transaction.set(None)
        release.set()
        await holder
        assert await a.ledger() == app.Ledger(2, [2])


async def test_a_participant_abandoned_by_its_client_unlocks_after_the_lease(key: Any) -> None:
    from raygrain.runtime.transactions import TransactionContext, current_transaction

    settings = TransactionSettings(lease=0.3)
    async with Cluster.local(actors=[Vault], transactions=settings) as cluster:
        a = cluster.get(Vault, key("a"))
        current_transaction.set(TransactionContext.new())  # a client that never commits
        await a.add(1, 10)
        current_transaction.set(None)
        assert await a.deposit(1) == 1  # waited for the lease; the change is gone


@pytest.mark.parametrize("lost_by", ["lease", "deactivation"])
@pytest.mark.parametrize("back_through", ["client", "turn"])
async def test_a_transaction_that_lost_a_participant_cannot_lock_it_afresh(
    key: Any, lost_by: str, back_through: str
) -> None:
    # The transaction credits b, loses its hold there (its change rolled back), and another
    # transaction aborts at b meanwhile; when it reaches b again (from the client, or from a
    # turn of a that does not know the transaction joined b), it must abort: locking b afresh
    # committed the transaction without its first credit. (Found by a port of Orleans'
    # ConsistencyTestRunner: random transactions lost updates.)
    from raygrain.actors import DeactivationReason
    from raygrain.runtime.transactions import TransactionContext, current_transaction

    settings = TransactionSettings(lease=0.3 if lost_by == "lease" else 30.0)
    async with Cluster.local(actors=[Vault], transactions=settings) as cluster:
        a, b = cluster.get(Vault, key("a")), cluster.get(Vault, key("b"))
        await a.deposit(100)
        transaction = TransactionContext.new()
        current_transaction.set(transaction)
        await b.add(1, 10)
        current_transaction.set(None)
        held = activation_of(cluster, b)
        if lost_by == "deactivation":
            await held.begin_deactivation(DeactivationReason.REQUESTED)
        await wait_until(lambda: held.guard is None, "b's hold to end")
        with pytest.raises(RuntimeError):
            async with cluster.transaction():  # another transaction aborts at b
                await b.add_then_fail(2, 1)
        current_transaction.set(transaction)
        why = "its lease ran out" if lost_by == "lease" else "the actor was deactivated"
        refused = f"(are gone|already aborted at .*): {why}"
        with pytest.raises(TransactionAbortedError, match=refused):
            if back_through == "client":
                await b.add(1, 5)
            else:
                await a.transfer_to(key("b"), 1, 5)
        current_transaction.set(None)
        assert await _ledgers(cluster, a, b) == [(100, []), (0, [])]


_GATES: dict[str, asyncio.Event] = {}


class Slow(Actor[int], name="test.transactions.Slow"):
    @transactional
    async def add_twice(self, amount: int) -> None:
        """Adds, waits for its gate, adds again."""
        self.state += amount
        await _GATES[str(self.context.key)].wait()
        self.state += amount

    @read_only
    async def value(self) -> int:
        return self.state


async def test_a_lease_running_out_during_a_turn_rolls_back_after_it(key: Any) -> None:
    # Orleans' transaction timeout tests. The lease ran out while the transaction's turn was
    # still running: the state was rolled back under the turn, which went on changing it, so
    # the aborted transaction's second change stayed in memory (read, and stored by the next
    # changing call).
    settings = TransactionSettings(lease=0.2)
    async with Cluster.local(actors=[Slow], transactions=settings) as cluster:
        slow = cluster.get(Slow, key("slow"))
        _GATES[str(slow.actor_id.key)] = gate = asyncio.Event()
        call = asyncio.ensure_future(slow.add_twice(1))
        await wait_until(lambda: slow.actor_id in _activations(cluster), "the activation")
        held = activation_of(cluster, slow)
        await wait_until(lambda: held.guard is not None, "the transaction to lock it")
        await wait_until(
            lambda: held.guard is None or getattr(held.guard, "aborting", False),
            "the lease to run out",
        )
        gate.set()
        with pytest.raises(TransactionAbortedError):
            await call
        assert await slow.value() == 0
        assert (await cluster.storage.read(slow.actor_id)).data is None  # type: ignore[union-attr]


async def test_a_call_that_got_no_answer_aborts_the_transaction_and_is_told(key: Any) -> None:
    # Orleans aborts a transaction any of whose calls failed. A call that timed out, caught by
    # the block, may have joined (it did: its turn went on): the block committed without it,
    # and its actor stayed locked until the lease ran out (30 s), every call to it waiting.
    async with Cluster.local(actors=[Slow, Vault]) as cluster:
        vault, slow = cluster.get(Vault, key("vault")), cluster.get(Slow, key("slow"))
        _GATES[str(slow.actor_id.key)] = gate = asyncio.Event()
        with pytest.raises(TransactionAbortedError, match=f"a call to {slow.actor_id}.* no answer"):
            async with cluster.transaction():
                await vault.add(1, 5)
                with pytest.raises(ActorCallTimeout):
                    await slow.with_timeout(0.2).add_twice(1)
        gate.set()
        assert await vault.ledger() == app.Ledger(0, [])
        assert await bounded(slow.value(), "the slow actor to be released", 10.0) == 0


def _activations(cluster: Cluster) -> set[Any]:
    return {a for silo in cluster.silos for a in silo.activations}


async def test_storage_without_atomic_multi_record_writes_is_refused(key: Any) -> None:
    class SingleRecordOnly:
        def __init__(self) -> None:
            self.inner = MemoryStorage()

        async def read(self, actor_id: Any) -> Any:
            return await self.inner.read(actor_id)

        async def write(self, actor_id: Any, data: bytes, etag: str | None) -> str:
            return await self.inner.write(actor_id, data, etag)

        async def clear(self, actor_id: Any, etag: str | None) -> str:
            return await self.inner.clear(actor_id, etag)

        async def aclose(self) -> None:
            await self.inner.aclose()

    async with Cluster.local(actors=[Vault], storage=SingleRecordOnly()) as cluster:  # type: ignore[arg-type]
        a = cluster.get(Vault, key("a"))
        with pytest.raises(TransactionAbortedError, match="no atomic multi-record write"):
            async with cluster.transaction():
                await a.add(1, 1)
        assert await a.deposit(1) == 1


def test_a_read_only_or_one_way_transactional_method_is_refused_at_class_definition() -> None:
    from raygrain.actors import read_only

    with pytest.raises(ConfigurationError, match="both @read_only and @transactional"):

        class Bad(Actor[None], name="test.BadTx"):
            @read_only
            @transactional
            async def peek(self) -> None: ...

    # Called in a transaction, a one-way transactional method locked its actor with no answer
    # to say it joined: the block committed without it, and the actor stayed locked (every
    # call to it waiting) until the lease ran out.
    from raygrain.actors import one_way

    with pytest.raises(ConfigurationError, match="both @one_way and @transactional"):

        class OneWay(Actor[int], name="test.OneWayTx"):
            @one_way
            @transactional
            async def add(self, amount: int) -> None: ...


async def test_transaction_settings_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="TransactionSettings"):
        Cluster.local(actors=[Vault], transactions={"lock_timeout": 1})  # type: ignore[arg-type]


async def test_a_call_in_a_block_that_finds_no_silo_does_not_hang_the_blocks_end(
    cluster: Cluster,
) -> None:
    # The transaction counted the call as running before the caller looked for its silo; with
    # no silo in the caller's view the call failed unsent, and nobody told the transaction,
    # whose end then waited for that call for ever.
    from raygrain.actors import SiloUnavailableError
    from raygrain.runtime.kernel import ConsistentHashRing

    a, b = cluster.get(Vault, "a"), cluster.get(Vault, "b")
    membership = cluster._caller._membership

    async def block() -> None:
        async with cluster.transaction():
            await a.add(1, 10)
            ring, membership.ring = membership.ring, ConsistentHashRing(())
            try:
                with pytest.raises(SiloUnavailableError):
                    await b.add(1, 10)
            finally:
                membership.ring = ring

    with pytest.raises(TransactionAbortedError):
        await bounded(block(), "the block's end")
    assert await _ledgers(cluster, a, b) == [(0, []), (0, [])]


async def test_a_call_from_a_peer_sending_the_earlier_four_field_header_still_runs(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 569ec10 added a fifth field to the transaction header (whether the call's transaction
    # joined its target already) and decoded exactly five: a client or silo from before, which
    # sends four, had every call in a transaction refused as malformed.
    import msgpack

    from raygrain.runtime.transactions._context import TransactionContext

    def earlier_header(self: TransactionContext, target: Any = None) -> bytes:
        header = [self.txid, self.start, bool(self.participants), self.in_turn]
        return msgpack.packb(header)  # type: ignore[no-any-return]

    monkeypatch.setattr(TransactionContext, "header", earlier_header)
    a, b = cluster.get(Vault, "a"), cluster.get(Vault, "b")
    await a.deposit(100)
    async with cluster.transaction():
        await a.add(1, -30)
        await b.add(1, 30)
    assert await _ledgers(cluster, a, b) == [(70, [1]), (30, [1])]


class Wordy(Actor[int], name="test.transactions.Wordy"):
    @transactional
    async def add(self, amount: int) -> int:
        self.state += amount
        return self.state

    @transactional
    async def fail(self, size: int) -> None:
        self.state += 1
        raise ValueError("x" * size)


async def test_the_remembered_cause_of_an_abort_is_bounded() -> None:
    # Each silo remembers why a transaction aborted at an actor (the last 4,096 pairs) and says
    # it to the transaction's later calls: the whole message of the error that aborted it was
    # kept, so large error messages made that memory, and every later refusal, that large.
    async with Cluster.local(actors=[Wordy]) as cluster:
        a = cluster.get(Wordy, "a")
        with pytest.raises(TransactionAbortedError) as refused:
            async with cluster.transaction():
                with pytest.raises(ValueError):
                    await a.fail(1_000_000)
                await a.add(1)
        assert "a call there raised ValueError: xxx" in str(refused.value)
        assert len(str(refused.value)) < 2_000
        assert await a.add(0) == 0
