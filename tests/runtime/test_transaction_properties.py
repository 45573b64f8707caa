"""Property: whatever the interleaving, committed transfers are serializable and aborted ones
leave no trace.

Runs on memory and on a SQLite file. Hypothesis draws batches of concurrent transfers (some
through a client block, some through a silo-started ``Vault.transfer_to``; some overdraw) over
a few accounts on three in-process silos. Each account records the order in which transfers
were applied to it; together those orders must form one serial order (no cycle), replaying the
committed transfers in that order from the start must never overdraw and must give exactly the
balances found, and every aborted transfer must be absent everywhere.
"""

from __future__ import annotations

import asyncio
import graphlib
import itertools
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raygrain.actors import TransactionAbortedError
from raygrain.runtime import Cluster
from tests.app import InsufficientFunds, Vault

ACCOUNTS = 4
START = 100

transfer = st.tuples(
    st.integers(0, ACCOUNTS - 1),  # from
    st.integers(0, ACCOUNTS - 1),  # to
    st.integers(1, 80),  # amount: large enough to overdraw now and then
    st.booleans(),  # True: a client block; False: transfer_to, started by a silo
).filter(lambda t: t[0] != t[1])


async def _run(batch: list[tuple[int, int, int, bool]], retries: int, storage: str) -> None:
    async with Cluster.local(actors=[Vault], silos=3, storage=storage) as cluster:
        vaults = [cluster.get(Vault, str(i)) for i in range(ACCOUNTS)]
        await asyncio.gather(*(v.deposit(START) for v in vaults))

        async def one(n: int, src: int, dst: int, amount: int, in_block: bool) -> None:
            if not in_block:
                await vaults[src].transfer_to(str(dst), n, amount)
                return

            async def block() -> None:
                await vaults[src].add(n, -amount)
                await vaults[dst].add(n, amount)

            await cluster.transact(block, retries=retries)

        outcomes = await asyncio.gather(
            *(one(n, *t) for n, t in enumerate(batch, 1)), return_exceptions=True
        )
        for outcome in outcomes:
            if outcome is not None and not isinstance(
                outcome, (TransactionAbortedError, InsufficientFunds)
            ):
                raise outcome
        committed = {n for n, o in enumerate(outcomes, 1) if o is None}
        ledgers = await asyncio.gather(*(v.ledger() for v in vaults))
    _check(batch, committed, [(x.balance, x.applied) for x in ledgers])


def _check(
    batch: list[tuple[int, int, int, bool]], committed: set[int], found: list[tuple[int, Any]]
) -> None:
    for n, (src, dst, _, _) in enumerate(batch, 1):
        holders = sorted(i for i, (_, applied) in enumerate(found) if n in applied)
        expected = sorted((src, dst)) if n in committed else []
        assert holders == expected, f"transfer {n}: applied at {holders}, expected {expected}"
    order: graphlib.TopologicalSorter[int] = graphlib.TopologicalSorter()
    for _, applied in found:
        assert len(applied) == len(set(applied)), "a transfer applied twice"
        for n in applied:
            order.add(n)
        for before, after in itertools.pairwise(applied):
            order.add(after, before)
    serial = list(order.static_order())  # raises CycleError if the orders disagree
    balances = [START] * ACCOUNTS
    for n in serial:
        src, dst, amount, _ = batch[n - 1]
        balances[src] -= amount
        balances[dst] += amount
        assert balances[src] >= 0, f"transfer {n} overdraws in the serial order {serial}"
    assert balances == [balance for balance, _ in found]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(transfer, min_size=1, max_size=30), st.integers(0, 3))
def test_committed_transfers_are_serializable_and_aborted_ones_leave_no_trace(
    batch: list[tuple[int, int, int, bool]], retries: int
) -> None:
    asyncio.run(_run(batch, retries, "memory://"))


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(transfer, min_size=1, max_size=30), st.integers(0, 3))
def test_on_sqlite_committed_transfers_are_serializable_and_aborted_ones_leave_no_trace(
    batch: list[tuple[int, int, int, bool]], retries: int
) -> None:
    # The same on a SQLite file: commits go through group commit, plain deposits through
    # queued writes, so their timing differs from memory's.
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(_run(batch, retries, f"sqlite:///{Path(directory) / 'bank.db'}"))
