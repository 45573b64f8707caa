"""The end of an event-sourced turn: its events appended after its method returned.

A method the runtime calls (``ActorMethod.function``) runs as ``journaled_turn``: when it
returns with events raised, it hands the kernel a ``TurnAppend`` (``end_turn_with``). The
kernel encodes the method's result first (a result that cannot be sent fails the turn, and
nothing is appended), then ends the turn from the append's callback once the batch holding it
committed (``storage.QueuedAppends``): no task stays suspended in ``append`` until the commit,
as a state write's turn ends from ``queue_write``'s callback. Nothing changes for the caller:
the reply still goes only after the append is durable, a turn whose append fails fails, and
no other turn of the activation starts before it ends.

The turn awaits its append instead (``finish``) when the log has no ``queue_append`` (memory,
the Ray storage server), when a snapshot falls due (writing one is awaited), and in a
transaction. A method called directly (``journaled``) appends before it returns.

A turn the runtime runs for the actor (a timer's tick, a reminder) runs as ``internal_turn``,
which is ``journaled_turn`` (or ``query_turn`` when it interleaves).

A ``@read_only`` or ``always_interleave`` method runs as ``query_turn``: it may run beside other
calls of the activation, so it raises no events (``raise_event`` refuses, see ``querying``).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Protocol

from raygrain.actors import ActorContext, ActorRuntime, StorageError, WrongExpectedVersionError
from raygrain.runtime.events._consistency import Written
from raygrain.storage import Appended, EncodedEvents

__all__ = [
    "APPEND_TRIES",
    "Journal",
    "JournaledActor",
    "TurnAppend",
    "forget_pending",
    "internal_turn",
    "journaled",
    "journaled_turn",
    "query_turn",
    "querying",
    "snapshot_due",
]

APPEND_TRIES = 3  # an append whose outcome is unknown is tried this often in all

QueueAppend = Callable[..., None]  # storage.QueuedAppends.queue_append


class Journal:
    """An activation's event-sourcing bookkeeping (``EventSourcedActor._journal``)."""

    __slots__ = (
        "category",
        "ending",
        "handle",
        "loaded",
        "loading",
        "pending",
        "queue_append",
        "snapshot_etags",
        "snapshot_version",
        "stale",
        "stream",
        "version",
        "written",
    )

    def __init__(self) -> None:
        self.handle: Any = None  # the activation's service("events")
        self.ending: TurnAppend | None = None  # how its turns end (runtime/events/_ending.py)
        self.stream = ""  # set on the first load
        self.category = ""
        self.loaded = False
        # An apply raised this turn: it may have changed the state in place before it did, so
        # the state is folded from the log again once the turn ends (see forget_pending).
        self.stale = False
        self.loading: asyncio.Future[None] | None = None  # the fold under way (_load)
        self.version = 0
        # The turn's events as the log stores them (type, data, id), encoded when raised.
        self.pending: list[tuple[str, bytes, str]] = []
        self.snapshot_version = 0
        self.snapshot_etags: dict[int, str | None] = {}
        # The last append's outcome (``last_written`` makes the token of it when asked).
        self.written: Appended | None = None
        # The log's queue_append (storage.QueuedAppends), None if it has none; looked up once.
        self.queue_append: QueueAppend | bool | None = False


class JournaledActor(Protocol):
    """What a turn's ending uses of its actor (an ``_actor.EventSourcedActor``)."""

    _context: ActorRuntime
    _es: Journal

    @property
    def context(self) -> ActorContext: ...

    def _journal(self) -> Journal: ...

    def _service(self) -> Any: ...

    def _queued_appends(self) -> QueueAppend | None: ...

    def _snapshot_every(self) -> int: ...

    async def _load(self) -> None: ...

    async def confirm_events(self) -> Written | None: ...


def journaled(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` with the event-sourcing turn around it: load, run, append, or forget (what
    a direct call runs; ``__es_turn__`` is what the runtime calls, see ``journaled_turn``)."""

    @functools.wraps(method)
    async def journaled(self: JournaledActor, *args: Any, **kwargs: Any) -> Any:
        journal = self._journal()
        if not journal.loaded:
            await self._load()
        try:
            result = await method(self, *args, **kwargs)
        except BaseException:
            forget_pending(self)
            raise
        if journal.pending:
            await self.confirm_events()
        return result

    journaled.__es_turn__ = journaled_turn(method)  # type: ignore[attr-defined]
    return journaled


def journaled_turn(method: Callable[..., Any]) -> Callable[..., Any]:
    """``journaled`` as the runtime calls it: the append ends the turn once it committed.
    (Its start is ``journaled``'s, written out again: a shared coroutine for it would cost
    every call one more frame.)"""

    @functools.wraps(method)
    async def turn(self: JournaledActor, *args: Any, **kwargs: Any) -> Any:
        try:
            journal = self._es
        except AttributeError:
            journal = self._journal()
        if not journal.loaded:
            await self._load()
        try:
            result = await method(self, *args, **kwargs)
            if journal.pending:
                ending = journal.ending  # (one per activation: its turns end one at a time)
                if ending is None:
                    ending = journal.ending = TurnAppend(self)
                ending.prepare()
        except BaseException:
            forget_pending(self)
            raise
        if journal.stale:  # an apply raised, caught by the method: fold before the next call
            journal.stale = journal.loaded = False
        if journal.pending:
            self._context.end_turn_with(ending)  # (the last step: the runtime takes it now)
        return result

    return turn


# The query method a turn runs in (set only for the call: a turn's context is its own).
querying: ContextVar[str | None] = ContextVar("raygrain_events_querying", default=None)


def query_turn(method: Callable[..., Any], name: str) -> Callable[..., Any]:
    """A read-only or interleaving method as the runtime calls it: the state loaded, and
    ``raise_event`` refused while it runs (its events would share the pending list of the
    turns beside it, and be appended by whichever confirmed first)."""

    @functools.wraps(method)
    async def query(self: JournaledActor, *args: Any, **kwargs: Any) -> Any:
        if not self._journal().loaded:
            await self._load()
        # (Reset, not left set: a context that ends as clean as it began is reused.)
        token = querying.set(name)
        try:
            return await method(self, *args, **kwargs)
        finally:
            querying.reset(token)

    return query


async def _run(actor: JournaledActor, function: Callable[[], Any]) -> None:
    await function()


_TICK = journaled_turn(_run)
_TICK_BESIDE = query_turn(_run, "an interleaving timer tick")


async def internal_turn(
    actor: JournaledActor, function: Callable[[], Any], interleave: bool
) -> None:
    """A turn the runtime runs on the actor's behalf (a timer's tick, a reminder, a stream
    event: the kernel's ``__internal_turn__`` protocol) as a method's: the events it raises
    are appended before it ends; an interleaving one raises none."""
    await (_TICK_BESIDE if interleave else _TICK)(actor, function)


def forget_pending(actor: JournaledActor) -> None:
    """After a method raised: its events were applied to the state already, so fold the log
    again before the next call rather than trust an undo."""
    journal = actor._journal()
    if journal.pending or journal.stale:
        journal.pending = []
        journal.loaded = False
        journal.stale = False


def snapshot_due(journal: Journal, every: int) -> bool:
    """Whether appending the pending events makes a snapshot due (one every ``every`` events;
    0: never)."""
    if not every:
        return False
    return (journal.version + len(journal.pending)) // every != journal.snapshot_version // every


class TurnAppend:
    """A turn's events, appended after its method returned (a kernel ``TurnEnding``)."""

    __slots__ = (
        "_actor",
        "_appended_to",
        "_done",
        "_encoded",
        "_every",
        "_journal",
        "_notify",
        "_queue",
        "_tries",
        "deferrable",
    )

    def __init__(self, actor: JournaledActor) -> None:
        self._actor = actor
        self._journal = actor._journal()
        self._notify = actor._service().appended  # the silo's projections: new events
        self._appended_to = self._appended  # (bound once: the callback of every append)
        # The log's queue (None: it has none, every turn awaits its append) and the snapshot
        # interval: the activation's, for as long as it lives.
        self._queue = actor._queued_appends()
        self._every = actor._snapshot_every()
        self.deferrable = False
        # The turn's events as the log stores them, kept for a retry (not the events: every
        # object a call keeps alive until its batch commits brings the next garbage collection
        # closer; under 1,000 writers each turn's NewEvent and field map, held to the commit,
        # made twice as many collections).
        self._encoded: EncodedEvents | None = None
        self._done: Callable[[Exception | None], None] | None = None
        self._tries = 0

    def prepare(self) -> None:
        """Ready for this turn's events. Without a queue (the log has none), or with a
        snapshot to write after the append, the turn awaits it (``finish``)."""
        self.deferrable = self._queue is not None and not snapshot_due(self._journal, self._every)
        self._tries = 0

    def start(self, done: Callable[[Exception | None], None]) -> None:
        self._done = done
        pending = self._journal.pending
        self._encoded = EncodedEvents(pending)  # (encoded as they were raised)
        pending.clear()  # (the journal keeps its list for the next turn's events)
        self._append()

    def _append(self) -> None:
        journal = self._journal
        self._tries += 1
        assert self._queue is not None
        try:
            self._queue(
                journal.stream, journal.category, journal.version, self._encoded, self._appended_to
            )
        except Exception as exc:  # refused before anything was queued (a closed store)
            self._failed(exc)

    def _appended(self, outcome: Appended | Exception) -> None:
        journal = self._journal
        if isinstance(outcome, Exception):
            if isinstance(outcome, WrongExpectedVersionError):
                # Another activation appended: this one is stale. It goes away once this
                # turn ends (a call before that folds the log again).
                self._actor.context.deactivate_on_idle()
            elif isinstance(outcome, StorageError) and self._tries < APPEND_TRIES:
                self._append()  # the outcome is unknown: the same event ids again
                return
            self._failed(outcome)
            return
        journal.version = outcome.version
        journal.written = outcome
        try:
            self._notify(journal.category)
        finally:  # (the turn ends whatever the notice did)
            done, self._done, self._encoded = self._done, None, None
            assert done is not None
            done(None)

    def _failed(self, error: Exception) -> None:
        # The state holds events the log may not: fold the log again before going on.
        self._journal.loaded = False
        self._told(error)

    def _told(self, error: Exception | None) -> None:
        done, self._done, self._encoded = self._done, None, None
        assert done is not None
        done(error)

    async def finish(self) -> None:
        await self._actor.confirm_events()

    def abandon(self) -> None:
        journal = self._journal
        journal.pending = []
        journal.loaded = False
