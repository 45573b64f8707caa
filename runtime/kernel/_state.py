"""The state slot of a stateful activation: what is stored, what is being written, rollback.

It keeps the encoded state last committed (and its ETag), the one write under way, and puts the
instance's state back when a turn fails. Writes of one activation take turns: each must start
from the ETag the previous one left. A flag, and a future only while someone waits, rather
than a Lock per activation: it costs nothing while the activation is idle.
"""

from __future__ import annotations

import asyncio
from typing import Any

from raygrain.actors import (
    ActorId,
    InconsistentStateError,
    SerializationError,
    decode_state,
    encode_state,
    state_class,
)
from raygrain.storage import StorageProvider

__all__ = ["StateSlot"]


class StateSlot:
    __slots__ = (
        "actor_id",
        "checked_type",
        "committed",
        "etag",
        "fenced",
        "in_flight",
        "rollbacks",
        "state_type",
        "storage",
        "waiters",
        "writing",
    )

    def __init__(self, actor_id: ActorId, state_type: type[Any], storage: StorageProvider) -> None:
        self.actor_id = actor_id
        self.state_type = state_type
        self.storage = storage
        self.etag: str | None = None
        self.committed: bytes | None = None  # the encoded state last stored (or loaded)
        self.writing = False
        self.in_flight: bytes | None = None  # the data of the write under way, if any
        self.rollbacks = 0  # how many times the state was rolled back (see TurnRunner)
        self.waiters: asyncio.Future[None] | None = None
        # What a state must be an instance of to load back (decode_state checks the same):
        # the declared class, or a generic alias's origin (dict[str, int]: dict); a declared
        # type that has none (a union, say) is not checked.
        self.checked_type: type = state_class(state_type) or object
        self.fenced = False  # a write of this slot hit an ETag conflict: a stale duplicate

    async def load(self) -> Any:
        """Read the stored state (a fresh one if none is stored)."""
        record = await self.storage.read(self.actor_id)
        self.etag = record.etag
        if record.data is None:
            state = self.state_type()
            self.committed = encode_state(state)
            return state
        self.committed = record.data
        return decode_state(record.data, self.state_type, str(self.actor_id))

    def encode(self, state: Any) -> bytes:
        if not isinstance(state, self.checked_type):
            # Stored, it could never be loaded again (StateDecodeError on every activation):
            # refuse it now, while the turn can still fail and roll back.
            raise SerializationError(
                f"state of {self.actor_id} must be a {self.checked_type.__qualname__}, the "
                f"actor's declared state type, not a {type(state).__qualname__}: it could not "
                "be loaded back"
            )
        try:
            return encode_state(state)
        except SerializationError as exc:
            raise SerializationError(f"state of {self.actor_id}: {exc}") from None

    def changed(self, state: Any) -> bytes | None:
        """``state`` encoded if it differs from the last committed one, else None."""
        data = self.encode(state)
        return None if data == self.committed else data

    async def commit(self, state: Any) -> None:
        """Write ``state`` if it changed, once no other write is under way."""
        while self.writing:  # (encode once the slot is free: see TurnRunner)
            await self.write_finished()
        data = self.changed(state)
        if data is not None:
            await self.write(data)

    async def write(self, data: bytes) -> None:
        """Write ``data``; the write slot must be free, as the caller checked just before."""
        self.start_write(data)
        try:
            self.etag = await self.storage.write(self.actor_id, data, self.etag)
            self.committed = data
        except InconsistentStateError:
            self.fenced = True
            raise
        finally:
            self.end_write()

    async def clear(self) -> Any:
        """Clear the stored state; returns a fresh state for the instance."""
        while self.writing:
            await self.write_finished()
        self.writing = True
        try:
            try:
                self.etag = await self.storage.clear(self.actor_id, self.etag)
            except InconsistentStateError:
                self.fenced = True
                raise
            state = self.state_type()
            self.committed = encode_state(state)
            return state
        finally:
            self.end_write()

    def adopt(self, data: bytes, etag: str) -> None:
        """``data`` was stored with ``etag`` by someone else on this activation's behalf (a
        queued write, a transaction's commit)."""
        self.committed, self.etag = data, etag

    def write_finished(self) -> asyncio.Future[None]:
        if self.waiters is None:
            self.waiters = asyncio.get_running_loop().create_future()
        return asyncio.shield(self.waiters)

    def start_write(self, data: bytes) -> None:
        assert not self.writing
        self.writing = True
        self.in_flight = data

    def end_write(self) -> None:
        self.writing = False
        self.in_flight = None
        waiters, self.waiters = self.waiters, None
        if waiters is not None:
            waiters.set_result(None)

    def rolled_back(self) -> Any:
        """The state to put back after a failed turn: the newest one that is stored or on its
        way, i.e. the last committed one, or the one a write under way carries (its turn has
        been told nothing yet, and will be told it succeeded; going back past it would lose
        that turn's changes from memory)."""
        # The state is shared by every turn running on the activation: a changing turn that
        # overlapped this one may have lost its changes too (see TurnRunner).
        self.rollbacks += 1
        newest = self.committed if self.in_flight is None else self.in_flight
        if newest is None:
            return self.state_type()
        return decode_state(newest, self.state_type, str(self.actor_id))
