"""The commit protocol's coordinator: prepare every participant, write the decision, tell them.

Every changed state is written in one atomic ``write_many`` with each participant's ETag: that
single storage transaction is the decision record. Only then are the participants told to
commit; one that never hears of it reloads from storage after its decision timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any, Protocol

from raygrain.actors import (
    ActorId,
    InconsistentStateError,
    TransactionAbortedError,
    TransactionInDoubtError,
)
from raygrain.runtime.kernel import Silo, get_logger
from raygrain.runtime.transactions._context import TX_ABORT, TX_COMMIT, TX_PREPARE
from raygrain.storage import StateWrite, StorageProvider

__all__ = ["CommitObserver", "Coordinator"]

# How often a failed decision write is read back before its outcome is declared unknown (each
# time after fencing found the write landing meanwhile).
_RESOLVE_TRIES = 3


class Participants(Protocol):
    def participant_message(self, target: ActorId, method: str, args: list[Any]) -> Any: ...


class CommitObserver(Protocol):
    """Sees every commit a coordinator runs (metrics, traces)."""

    def commit_ended(
        self, txid: str, committed: bool, reason: str, phases: list[tuple[str, float, float]]
    ) -> None:
        """``reason``: why it aborted ("prepare_failed", "write_failed", ...; "" when it
        committed); ``phases``: (name, start, end) in ``time.time()`` seconds, for "prepare"
        and "write" as far as they ran (a failed one named by its reason)."""


class Coordinator:
    """Runs the commit protocol for one silo (or the client's proxy for it)."""

    def __init__(
        self, silo: Silo, participants: Participants, storage: StorageProvider, timeout: float
    ) -> None:
        self._silo = silo
        self._participants = participants
        self._storage = storage
        self._timeout = timeout
        self.observers: list[CommitObserver] = []

    async def commit(self, txid: str, participants: Iterable[ActorId]) -> None:
        """Prepare every participant, write their states in one storage transaction, then
        tell them; raises ``TransactionAbortedError`` (after aborting them) if any step fails
        before the write or the write was not stored, and ``TransactionInDoubtError`` when
        whether it was stored cannot be known (see ``_resolve``)."""
        if not self.observers:
            await self._commit(txid, participants, [])
            return
        phases: list[tuple[str, float, float]] = []
        try:
            await self._commit(txid, participants, phases)
        except TransactionInDoubtError:
            for observer in self.observers:
                observer.commit_ended(txid, False, "in_doubt", phases)
            raise
        except TransactionAbortedError:
            # The phase that did not finish names the reason (see _commit).
            reason = phases[-1][0] if phases and phases[-1][0].endswith("_failed") else "error"
            for observer in self.observers:
                observer.commit_ended(txid, False, reason, phases)
            raise
        for observer in self.observers:
            observer.commit_ended(txid, True, "", phases)

    async def _commit(
        self, txid: str, participants: Iterable[ActorId], phases: list[tuple[str, float, float]]
    ) -> None:
        order = sorted(set(participants), key=str)
        started = time.time()
        prepared = await self._to_all(order, TX_PREPARE, txid)
        phases.append(("prepare", started, time.time()))
        failed = [(p, r) for p, r in zip(order, prepared, strict=True) if isinstance(r, Exception)]
        if failed:
            phases.append(("prepare_failed", started, started))
            await self.abort(txid, order)
            who, why = failed[0]
            raise TransactionAbortedError(
                f"transaction {txid} aborted: participant {who} could not prepare: {why}"
            )
        write_many = getattr(self._storage, "write_many", None)
        if write_many is None:
            phases.append(("no_atomic_write_failed", started, started))
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
        started = time.time()
        try:
            etags = await write_many(writes) if writes else []
        except InconsistentStateError as exc:
            # Refused as a whole (a participant's ETag moved): nothing of it was stored.
            phases.append(("write_failed", started, time.time()))
            await self.abort(txid, order, reload=True)
            raise TransactionAbortedError(
                f"transaction {txid} aborted: its commit write was refused: {exc}"
            ) from None
        except Exception as exc:
            # Any other failure (a lost reply, a store that died mid-commit) may have come
            # after the write was stored: read the decision back before saying anything.
            try:
                resolved = await self._resolve(txid, writes, exc)
            except TransactionInDoubtError:
                await self.abort(txid, order, reload=True)  # all reload what storage holds
                raise
            if resolved is None:
                phases.append(("write_failed", started, time.time()))
                await self.abort(txid, order, reload=True)
                raise TransactionAbortedError(
                    f"transaction {txid} aborted: its commit write failed ({exc}) and was "
                    "found not stored"
                ) from None
            etags = resolved
        phases.append(("write", started, time.time()))
        new_etags = {w.actor_id: etag for w, etag in zip(writes, etags, strict=True)}
        # Committed. Participants learn it without the caller waiting: until they do, they
        # stay locked, so nobody reads around the outcome; one that never hears of it reloads
        # from storage when its decision timeout runs out.
        for participant in order:
            sent = self._send(participant, TX_COMMIT, txid, new_etags.get(participant))
            if isinstance(sent, asyncio.Future):
                sent.add_done_callback(_retrieve)

    async def _resolve(
        self, txid: str, writes: list[StateWrite], failure: Exception
    ) -> list[str] | None:
        """The outcome of a decision write that failed with ``failure``, read from storage:
        the new ETags if it was stored, None if it was not (and now never can be). Raises
        ``TransactionInDoubtError`` (the participants told to reload) when storage cannot say.

        The write is atomic, so the records show all of it or none of it. "None of it" is
        only final once the write can no longer land (it may still be on its way to the
        store): rewriting one participant's record as it is, with its current ETag, fences
        it, since the delayed write expects the older ETag and would then be refused."""
        try:
            for _ in range(_RESOLVE_TRIES):
                records = [await self._storage.read(w.actor_id) for w in writes]
                if all(
                    r.etag != w.expected_etag and r.data == w.data
                    for r, w in zip(records, writes, strict=True)
                ):
                    get_logger().warning("transaction_commit_resolved", txid=txid, outcome="stored")
                    return [str(r.etag) for r in records]  # (stored: none is None)
                if not all(r.etag == w.expected_etag for r, w in zip(records, writes, strict=True)):
                    break  # neither this write's outcome nor the state before it: unknown
                first, record = writes[0], records[0]
                try:
                    await self._storage.write_many(
                        [StateWrite(first.actor_id, record.data, record.etag)]
                    )
                except InconsistentStateError:
                    continue  # the write (or another) landed meanwhile: look again
                get_logger().warning("transaction_commit_resolved", txid=txid, outcome="absent")
                return None
        except Exception as exc:
            get_logger().warning("transaction_resolve_failed", txid=txid, error=repr(exc))
        raise TransactionInDoubtError(
            f"transaction {txid}: the outcome of its commit is unknown: the decision write "
            f"failed ({failure}) and storage could not tell whether it was stored; every "
            "participant reloads what storage holds (all of the transaction or none of it)"
        )

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
