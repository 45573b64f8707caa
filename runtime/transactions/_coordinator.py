"""The commit protocol's coordinator: prepare every participant, write the decision, tell them.

Every changed state is written in one atomic ``write_many`` with each participant's ETag: that
single storage transaction is the decision record. Only then are the participants told to
commit; one that never hears of it reloads from storage after its decision timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Protocol

from raygrain.actors import ActorId, TransactionAbortedError
from raygrain.runtime.kernel import Silo
from raygrain.runtime.transactions._context import TX_ABORT, TX_COMMIT, TX_PREPARE
from raygrain.storage import StateWrite, StorageProvider

__all__ = ["Coordinator"]


class Participants(Protocol):
    def participant_message(self, target: ActorId, method: str, args: list[Any]) -> Any: ...


class Coordinator:
    """Runs the commit protocol for one silo (or the client's proxy for it)."""

    def __init__(
        self, silo: Silo, participants: Participants, storage: StorageProvider, timeout: float
    ) -> None:
        self._silo = silo
        self._participants = participants
        self._storage = storage
        self._timeout = timeout

    async def commit(self, txid: str, participants: Iterable[ActorId]) -> None:
        """Prepare every participant, write their states in one storage transaction, then
        tell them; raises ``TransactionAbortedError`` (after aborting them) if any step fails
        before the write."""
        order = sorted(set(participants), key=str)
        prepared = await self._to_all(order, TX_PREPARE, txid)
        failed = [(p, r) for p, r in zip(order, prepared, strict=True) if isinstance(r, Exception)]
        if failed:
            await self.abort(txid, order)
            who, why = failed[0]
            raise TransactionAbortedError(
                f"transaction {txid} aborted: participant {who} could not prepare: {why}"
            )
        write_many = getattr(self._storage, "write_many", None)
        if write_many is None:
            await self.abort(txid, order)
            raise TransactionAbortedError(
                f"transaction {txid} aborted: the storage provider "
                f"{type(self._storage).__name__} has no atomic multi-record write (write_many)"
            )
        writes = []
        for participant, answer in zip(order, prepared, strict=True):
            data, etag = answer  # type: ignore[misc]  # every failure was handled above
            if data is not None:
                writes.append(StateWrite(participant, data, etag))
        try:
            etags = await write_many(writes) if writes else []
        except Exception as exc:
            # The outcome of a failed write is not always known (a lost connection): the
            # participants reload from storage, which holds whatever was decided.
            await self.abort(txid, order, reload=True)
            raise TransactionAbortedError(
                f"transaction {txid} aborted: its commit write failed: {exc}"
            ) from None
        new_etags = {w.actor_id: etag for w, etag in zip(writes, etags, strict=True)}
        # Committed. Participants learn it without the caller waiting: until they do, they
        # stay locked, so nobody reads around the outcome; one that never hears of it reloads
        # from storage when its decision timeout runs out.
        for participant in order:
            sent = self._send(participant, TX_COMMIT, txid, new_etags.get(participant))
            if isinstance(sent, asyncio.Future):
                sent.add_done_callback(_retrieve)

    async def abort(self, txid: str, participants: Iterable[ActorId], reload: bool = False) -> None:
        await self._to_all(participants, TX_ABORT, txid, reload)

    async def _to_all(
        self, participants: Iterable[ActorId], method: str, *args: Any
    ) -> list[Any | Exception]:
        """Send ``method`` to every participant at once; their results or errors, in order."""
        sent = [self._send(p, method, *args) for p in participants]
        results: list[Any | Exception] = []
        for outcome in sent:
            try:
                if isinstance(outcome, asyncio.Future):
                    results.append(self._silo.caller.result_of(await outcome))
                else:
                    results.append(outcome)
            except Exception as exc:
                results.append(exc)
        return results

    def _send(self, target: ActorId, method: str, *args: Any) -> Any:
        """The result at once for a participant hosted here (no message needed), else a future
        of the response; an error of the local handler is returned, not raised."""
        silo = self._silo
        try:
            if silo.hosts(target):
                return self._participants.participant_message(target, method, list(args))
            return silo.caller.send_system(target, method, list(args), self._timeout)
        except Exception as exc:
            return exc


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # a lost commit message is handled by the participant's timeout
