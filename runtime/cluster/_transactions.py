"""Multi-actor transactions from a client: ``cluster.transaction()`` blocks and
``cluster.transact(body)`` with retries. The client ends a transaction: it asks a silo of a
participant to coordinate the commit (that silo has the storage that records the decision), or
tells every participant to abort. ``Cluster`` takes these methods from ``ClusterTransactions``.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from raygrain.actors import (
    ActorCallTimeout,
    ClusterClosedError,
    ConfigurationError,
    InvalidCallError,
    SiloUnavailableError,
    TransactionAbortedError,
    TransactionInDoubtError,
)
from raygrain.runtime.kernel import Caller
from raygrain.runtime.transactions import (
    TX_ABORT,
    TX_COORDINATE,
    TransactionContext,
    current_transaction,
    encode_participants,
)

__all__ = ["ClusterTransactions"]

R = TypeVar("R")


class ClusterTransactions:
    """The transaction methods of ``Cluster`` (over its caller)."""

    _caller: Caller

    def _check_running(self, what: str) -> None:
        raise NotImplementedError

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[TransactionContext]:
        """Run the block's ``@transactional`` calls as one multi-actor ACID transaction.

        Leaving the block commits every participant's changes atomically, or raises
        ``TransactionAbortedError`` and keeps none; an exception leaving the block aborts it.
        Inside a transaction already (an enclosing block, or a ``@transactional`` turn), the
        block joins it instead: transactions do not nest. An exception leaving such a joined
        block dooms the transaction it joined, even if the enclosing code catches it: the
        enclosing block then ends with ``TransactionAbortedError`` (as Orleans aborts a
        transaction whose joined work failed).
        """
        async with self._transaction(None) as transaction:
            yield transaction

    @asynccontextmanager
    async def _transaction(self, start: float | None) -> AsyncIterator[TransactionContext]:
        outer = current_transaction.get()
        if outer is not None:
            try:
                yield outer
            except BaseException as exc:
                if outer.doomed is None:
                    outer.doomed = (
                        f"a transaction block joined to it raised {type(exc).__name__}: {exc}"
                    )
                raise
            return
        self._check_running("cluster.transaction()")
        transaction = TransactionContext.new(start)
        token = current_transaction.set(transaction)
        try:
            yield transaction
        except BaseException:
            current_transaction.reset(token)
            await transaction.end()  # calls still running join first, so all of it aborts
            await self._end_transaction(transaction, commit=False)
            raise
        current_transaction.reset(token)
        # Calls made in the block and not awaited (a task it started) commit with it: wait
        # for them; any made after this fails at once (see TransactionContext.end).
        await transaction.end()
        if transaction.doomed is not None:
            await self._end_transaction(transaction, commit=False)
            raise TransactionAbortedError(
                f"transaction {transaction.txid} aborted: {transaction.doomed}"
            )
        await self._end_transaction(transaction, commit=True)

    async def transact(
        self, body: Callable[[], Awaitable[R]], *, retries: int = 3, backoff: float = 0.005
    ) -> R:
        """Run ``body()`` in a transaction, running it again (up to ``retries`` more times,
        after a short random pause) when it aborts; the last abort is raised.

        Only a known abort is retried: a ``TransactionInDoubtError`` (the commit's outcome
        could not be read back, see its docstring) is raised at once, since running the body
        again could apply it twice. Before reporting a failed commit, the coordinator reads
        the decision back from storage: a commit found stored counts as committed."""
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ConfigurationError(f"retries must be an int >= 0, got {retries!r}")
        if (
            isinstance(backoff, bool)
            or not isinstance(backoff, (int, float))
            or not 0 <= backoff < math.inf
        ):
            raise ConfigurationError(
                f"backoff must be a finite number of seconds >= 0, got {backoff!r}"
            )
        if not callable(body):
            if inspect.iscoroutine(body):
                body.close()  # (never awaited: say so here rather than in a warning later)
            raise InvalidCallError(
                "transact runs body(): pass an async function taking no arguments (not its "
                f"call), got {type(body).__name__}"
            )
        start = time.time()
        for attempt in range(retries + 1):
            try:
                # Each attempt keeps the first one's age: under wait-die an aborted transaction
                # grows older with every retry until it wins its locks, so none starves.
                async with self._transaction(start):
                    running = body()
                    if not inspect.isawaitable(running):
                        raise InvalidCallError(
                            "transact runs body(): pass an async function taking no arguments; "
                            f"body() returned {type(running).__name__}, which cannot be awaited"
                        )
                    return await running
            except TransactionAbortedError:
                if attempt == retries:
                    raise
                await asyncio.sleep(random.uniform(0, backoff * 2**attempt))
        raise AssertionError("unreachable")

    async def _end_transaction(self, transaction: TransactionContext, commit: bool) -> None:
        participants = sorted(transaction.participants, key=str)
        if not commit:  # (calls that got no answer may have joined: they hear it too)
            participants = sorted(transaction.participants | transaction.uncertain, key=str)
        if not participants:
            return
        timeout = self._caller.default_timeout
        if commit:
            # A silo coordinates: it has the storage that records the decision.
            try:
                await self._caller.invoke_system(
                    participants[0],
                    TX_COORDINATE,
                    [transaction.txid, encode_participants(participants)],
                    timeout,
                )
            except (TransactionAbortedError, TransactionInDoubtError):
                raise
            except (SiloUnavailableError, ActorCallTimeout, ClusterClosedError) as exc:
                # The commit was asked for and no answer came: it may have been decided.
                raise TransactionInDoubtError(
                    f"transaction {transaction.txid}: the outcome of its commit is unknown: "
                    f"the coordinating silo did not answer ({exc}); it is applied to every "
                    "participant or to none"
                ) from exc
            return
        await asyncio.gather(
            *(
                self._caller.invoke_system(p, TX_ABORT, [transaction.txid, False], timeout)
                for p in participants
            ),
            return_exceptions=True,
        )
