"""The saga index: which sagas of a type exist and in which phase, in 16 shard actors per type.

Two jobs. ``list_sagas`` reads it (list by phase). And it wakes the live sagas: each shard with
a live saga holds a durable reminder, and on every tick sends ``wake`` (one-way) to each saga
it holds as running or compensating. After a crash, a failover or a full restart the reminder
fires on the shard's new owner, the saga is activated wherever the ring places it, and its
activation resumes it. Parked sagas (their progress is another definition's) are woken too:
their code may have come back. A saga is recorded as running before its first step runs (and before
its start is acknowledged), and as ended only after its end committed, so the index may wake a
saga that has nothing to do (it tells the index so), but never misses one that has.

A silo's sagas send their records through one ``IndexWriter``, which batches them per shard
(one call in flight per shard, the records that came meanwhile in the next): a shard commits
a batch in one turn, as a store commits a group of writes in one transaction. A saga's start
is on its critical path and goes at once; its end is not (the saga's result does not wait for
it, and a crash before it is stored costs only a needless wake), so an end waits up to
``END_LINGER`` for company: usually the next start's batch takes it along. A shard writes its
whole list at each batch, so fewer batches are most of what the index costs a saga.
"""

from __future__ import annotations

import asyncio
import zlib
from dataclasses import dataclass, field
from typing import Any

from raygrain.actors import Actor, ActorId, ActorKey, ActorRef, ReminderTick, read_only
from raygrain.runtime.kernel import Silo, get_logger
from raygrain.runtime.sagas._record import LIVE, WOKEN, SagaPhase

__all__ = [
    "END_LINGER",
    "INDEX_SHARDS",
    "INDEX_TYPE",
    "IndexWriter",
    "SagaIndex",
    "shard_key",
    "shard_of",
]

INDEX_TYPE = "raygrain.SagaIndex"
INDEX_SHARDS = 16
_REMINDER = "wake-sagas"
END_LINGER = 0.1  # seconds a record of an ended saga may wait to share a batch (real time)


def shard_key(type_name: str, shard: int) -> str:
    return f"{type_name}#{shard}"


def shard_of(saga: ActorKey) -> int:
    # repr: the saga 7 and the saga "7" are different actors.
    return zlib.crc32(repr(saga).encode()) % INDEX_SHARDS


@dataclass
class SagaIndexState:
    live: dict[Any, str] = field(default_factory=dict)  # saga id -> running | ... | parked
    finished: dict[Any, str] = field(default_factory=dict)  # oldest first, bounded
    reminded: bool = False


class SagaIndex(Actor[SagaIndexState], name=INDEX_TYPE):
    """One shard of the index of one saga type (key ``<saga type>#<shard>``)."""

    async def record(self, entries: list[tuple[ActorKey, str]]) -> None:
        """Record each ``(saga id, phase)``, in order."""
        state = self.state
        for saga, phase in entries:
            state.finished.pop(saga, None)
            if phase in WOKEN:
                state.live[saga] = phase
                continue
            state.live.pop(saga, None)
            if phase != SagaPhase.NOT_STARTED.value:
                state.finished[saga] = phase
        keep = self._service().settings.keep_finished
        while len(state.finished) > keep:
            del state.finished[next(iter(state.finished))]
        if state.live and not state.reminded:
            await self._remind()

    async def on_activate(self) -> None:
        # ``reminded`` says what the reminder table should hold; a store written by earlier
        # code may say so of a reminder it lost (see on_reminder), leaving its live sagas to
        # nobody. A read per shard activation checks it.
        state = self.state
        if state.live and state.reminded and await self.reminders.get(_REMINDER) is None:
            get_logger().warning("saga_index_reminder_lost", index=str(self.context.id))
            await self._remind()

    async def _remind(self) -> None:
        period = self._service().wake_period()
        await self.reminders.register(_REMINDER, due=period, period=period)
        self.state.reminded = True

    @read_only
    async def entries(self, phase: str | None = None) -> list[tuple[ActorKey, str]]:
        found = [*self.state.live.items(), *self.state.finished.items()]
        return [(saga, at) for saga, at in found if phase is None or at == phase]

    async def on_reminder(self, name: str, tick: ReminderTick) -> None:
        state = self.state
        if not state.live:
            # The flag is stored before the reminder goes: a crash (or a failed commit) in
            # between leaves a reminder with nothing to wake, which the next tick removes,
            # never a shard that believes it is reminded while its live sagas wait for ever.
            state.reminded = False
            await self.context.save()
            await self.reminders.unregister(_REMINDER)
            return
        saga_type = str(self.context.key).rsplit("#", 1)[0]
        woken = await asyncio.gather(
            *(self.actors.ref(saga_type, saga).wake() for saga in state.live),
            return_exceptions=True,
        )
        failed = [error for error in woken if isinstance(error, Exception)]
        if failed:  # the next tick tries them again
            get_logger().warning(
                "saga_wake_failed",
                index=str(self.context.id),
                sagas=len(failed),
                error=repr(failed[0]),
            )

    def _service(self) -> Any:
        return self._context.service("sagas")


class IndexWriter:
    """Sends one silo's index records, batched per shard."""

    def __init__(self, silo: Silo) -> None:
        self._silo = silo
        self._pending: dict[str, list[tuple[ActorKey, str, asyncio.Future[None]]]] = {}
        self._sending: set[str] = set()
        self._lingering: dict[str, asyncio.TimerHandle] = {}

    def record(self, saga: ActorId, phase: str) -> asyncio.Future[None]:
        """Record ``saga`` in ``phase``; the future completes once the shard committed it. A
        live phase is sent at once; another may wait up to ``END_LINGER`` for company."""
        shard = shard_key(saga.type_name, shard_of(saga.key))
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._pending.setdefault(shard, []).append((saga.key, phase, done))
        if shard in self._sending:
            return done  # (the sender takes it with the next batch)
        if phase in LIVE:
            self._start(shard)
        elif shard not in self._lingering:
            self._lingering[shard] = loop.call_later(END_LINGER, self._start, shard)
        return done

    def _start(self, shard: str) -> None:
        lingering = self._lingering.pop(shard, None)
        if lingering is not None:
            lingering.cancel()
        if shard not in self._sending and shard in self._pending:
            self._sending.add(shard)
            self._silo.spawn(self._send(shard))

    async def _send(self, shard: str) -> None:
        index = ActorRef(ActorId(INDEX_TYPE, shard), self._silo.caller)
        try:
            while batch := self._pending.pop(shard, None):
                error: Exception | None = None
                try:
                    await index.record([(saga, phase) for saga, phase, _ in batch])
                except Exception as exc:
                    error = exc
                for _, _, done in batch:
                    if done.done():
                        continue
                    if error is None:
                        done.set_result(None)
                    else:
                        done.set_exception(error)
        finally:
            self._sending.discard(shard)
