"""``EventSourcedActor``: an actor whose state is the fold of its own stream of events.

A command method raises events (``self.raise_event``) instead of changing the state; each
event is applied at once to ``self.state`` through the pure ``apply(state, event)`` (so the
rest of the turn sees it), and when the method returns, the turn's events are appended to the
actor's stream in one atomic append with the version the activation last saw. Only then does
the caller get the result: acknowledged => durable. A stale duplicate activation's append is
refused (``WrongExpectedVersionError``) and it deactivates. A method that raises appends
nothing, and the activation rebuilds its state from the log before its next call. An append
whose outcome is unknown is retried with the same event ids (the log stores them once).

Activation loads the newest readable snapshot and replays the events after it. A snapshot is
written every ``snapshot_every`` events, into one of ``snapshots_kept`` slots in turn, so the
last few survive (an unreadable newest one, e.g. after a state class changed incompatibly,
falls back to an older one or to a full replay).

Every public method of the class is wrapped at class creation to do this around the user's
code; the kernel sees a stateless actor (``Actor[None]``) and writes nothing per turn itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar, cast

from raygrain.actors import (
    Actor,
    ActorId,
    ConfigurationError,
    InconsistentStateError,
    StorageError,
    WrongExpectedVersionError,
    decode,
    decode_state,
    encode,
    encode_state,
)
from raygrain.runtime.events._codec import EventTypes
from raygrain.runtime.events._consistency import Written
from raygrain.runtime.events._ending import (
    APPEND_TRIES,
    Journal,
    QueueAppend,
    forget_pending,
    internal_turn,
    journaled,
    query_turn,
    querying,
    snapshot_due,
)
from raygrain.runtime.kernel import ActivationState, get_logger
from raygrain.storage import EncodedEvents, EventLog, StorageProvider

__all__ = ["EventSourcedActor", "key_of_stream", "snapshot_id", "stream_of"]

S = TypeVar("S")
E = TypeVar("E")

_PAGE = 1000  # events read per page while replaying
SNAPSHOT_TYPE = "raygrain.events.snapshot"


def stream_of(actor_id: ActorId) -> str:
    """The stream of an actor: ``Type/key`` (``Type/#12`` for the int key 12; a str key that
    starts with ``#`` gets a second one, so the two never meet)."""
    key = actor_id.key
    text = f"#{key}" if isinstance(key, int) else (f"#{key}" if key.startswith("#") else key)
    return f"{actor_id.type_name}/{text}"


def key_of_stream(stream: str) -> str | int:
    """The actor key a stream belongs to (the inverse of ``stream_of``)."""
    text = stream.split("/", 1)[1]
    if text.startswith("##"):
        return text[1:]
    return int(text[1:]) if text.startswith("#") else text


def snapshot_id(stream: str, slot: int) -> ActorId:
    return ActorId(SNAPSHOT_TYPE, f"{stream}#{slot}")


class EventSourcedActor(Actor[None], Generic[S, E]):
    """Base class of event-sourced actors: ``class Cart(EventSourcedActor[CartState, CartEvent])``
    where ``CartState`` is default-constructible and ``CartEvent`` a dataclass or a union of
    dataclasses. Implement ``apply(state, event) -> state`` (pure: no I/O, no randomness, no
    clock); methods call ``self.raise_event(event)``. Class keywords besides ``Actor``'s:
    ``snapshot_every`` (events between snapshots, default 100; 0: never) and ``snapshots_kept``
    (default 3). Override the class method ``upcast`` to read old event shapes."""

    __es_state_type__: ClassVar[Any] = None
    __es_events__: ClassVar[EventTypes]
    # How the runtime runs a timer's tick or a reminder of the actor (the kernel's protocol):
    # the events the turn raises are appended before it ends, as a method's.
    __internal_turn__ = internal_turn
    __es_snapshot_every__: ClassVar[int] = 100
    __es_snapshots_kept__: ClassVar[int] = 3

    state: S  # type: ignore[assignment]  # the fold of the log, not a kernel-managed state
    _es: Journal

    def __init_subclass__(
        cls,
        *,
        snapshot_every: int | None = None,
        snapshots_kept: int | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("reentrant") or kwargs.get("stateless_worker"):
            raise ConfigurationError(
                f"{cls.__qualname__}: an event-sourced actor runs one turn at a time "
                "(reentrant and stateless_worker do not apply)"
            )
        for name, value, least in (
            ("snapshot_every", snapshot_every, 0),
            ("snapshots_kept", snapshots_kept, 1),
        ):
            if value is not None and (not isinstance(value, int) or value < least):
                raise ConfigurationError(
                    f"{cls.__qualname__}: {name} must be an int >= {least}, got {value!r}"
                )
        if snapshot_every is not None:
            cls.__es_snapshot_every__ = snapshot_every
        if snapshots_kept is not None:
            cls.__es_snapshots_kept__ = snapshots_kept
        for name, member in list(cls.__dict__.items()):
            hook = name in ("on_activate", "on_deactivate", "on_reminder")
            if not name.startswith("_") and not hook and inspect.iscoroutinefunction(member):
                setattr(cls, name, journaled(member))
        if "on_activate" in cls.__dict__:  # the state is loaded before the user's hook runs
            cls.on_activate = _loading_first(cls.__dict__["on_activate"])  # type: ignore[method-assign]
        if "on_deactivate" in cls.__dict__:
            cls.on_deactivate = _appending(cls.__dict__["on_deactivate"])  # type: ignore[method-assign]
        super().__init_subclass__(**kwargs)
        for name, method in cls.__actor_methods__.items():
            if method.options.transactional:
                # A turn's events are appended when it ends, not when a transaction commits:
                # an aborted transaction would keep them.
                raise ConfigurationError(
                    f"{cls.__qualname__}.{name}: an event-sourced actor cannot take part in "
                    "transactions (its events are appended when the turn ends, whatever the "
                    "transaction does); drop @transactional, and use a saga to change it "
                    "with other actors"
                )
        for name, method in cls.__actor_methods__.items():
            # What the runtime calls: the turn ends once its events are appended (see _ending).
            turn = getattr(method.function, "__es_turn__", None)
            if turn is None:
                continue
            options = method.options
            if options.read_only or options.always_interleave:  # runs beside other calls
                turn = query_turn(method.function.__wrapped__, name)  # type: ignore[attr-defined]
            cls.__actor_methods__[name] = dataclasses.replace(method, function=turn)
        for base in getattr(cls, "__orig_bases__", ()):
            if typing.get_origin(base) is EventSourcedActor:
                state_type, event_type = typing.get_args(base)
                if isinstance(state_type, TypeVar) or isinstance(event_type, TypeVar):
                    break
                if not callable(state_type):
                    raise ConfigurationError(f"{cls.__qualname__}: bad state type {state_type!r}")
                cls.__es_state_type__ = state_type
                cls.__es_events__ = EventTypes(cls.__qualname__, event_type)

    async def on_activate(self) -> None:
        """Loads the state (the newest snapshot and the events after it); a subclass's own
        ``on_activate`` runs after that, seeing the loaded state."""
        if not self._journal().loaded:
            await self._load()

    # -- what a subclass writes ----------------------------------------------------------------

    def apply(self, state: S, event: E) -> S:
        """Return the state after ``event`` (may change ``state`` in place and return it)."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement apply(state, event)")

    def initial_state(self) -> S:
        """The state before the first event (default: the state type built with no arguments)."""
        if self.__es_state_type__ is None:
            raise ConfigurationError(
                f"{type(self).__qualname__}: declare the state and event types, "
                "EventSourcedActor[State, Event]"
            )
        return cast(S, self.__es_state_type__())

    @classmethod
    def upcast(cls, type_name: str, data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Turn a stored event's (type name, fields) into the current shape (default: as is)."""
        return type_name, data

    # -- what a subclass uses ------------------------------------------------------------------

    def raise_event(self, event: E) -> None:
        """Record ``event`` for this turn and apply it to ``self.state`` now."""
        try:
            journal = self._es
        except AttributeError:
            journal = self._journal()
        if not journal.loaded:
            raise ConfigurationError(
                f"{self.context.id}: raise_event outside a method call (apply must be pure)"
            )
        query = querying.get()
        if query is not None:
            raise ConfigurationError(
                f"{self.context.id}: raise_event in {query}, a read-only (or always "
                "interleaving) method: it runs beside other calls, so its events could not be "
                "appended as its own; raise events in a method that is neither"
            )
        context = self._context
        if (
            not getattr(context, "exclusive", True)
            and getattr(context, "state", None) is ActivationState.VALID
        ):
            # (A task the actor started, running between its turns: no turn would append it.)
            raise ConfigurationError(
                f"{self.context.id}: raise_event outside a turn of the actor (from a task it "
                "started, say): raise events in its methods, timers or reminders"
            )
        new = self.__es_events__.encoded(event)
        try:
            state = self.apply(self.state, event)
        except BaseException:
            # Not recorded: an event its own apply refuses would be appended (if the method
            # caught the error) and then fail every replay, so the actor could never activate.
            journal.stale = True
            raise
        journal.pending.append(new)
        self.state = state

    @property
    def version(self) -> int:
        """The stream's version this state reflects (tentative events of the turn included)."""
        try:
            journal = self._es
        except AttributeError:
            journal = self._journal()
        return journal.version + len(journal.pending)

    async def confirm_events(self) -> Written | None:
        """Append the events raised so far in this turn now (the turn end does it anyway);
        returns where they went (a read-your-writes token), or None if there were none."""
        journal = self._journal()
        if not journal.pending:
            return None
        events = EncodedEvents(journal.pending)
        journal.pending = []
        stream, category = journal.stream, journal.category
        log = self._log()
        appended = None
        try:
            for attempt in range(APPEND_TRIES):
                try:
                    appended = await log.append(stream, category, journal.version, events)
                    break
                except WrongExpectedVersionError:
                    # Another activation appended: this one is stale. Go away once this turn
                    # ends (a call before that folds the log again).
                    self.context.deactivate_on_idle()
                    raise
                except StorageError:
                    if attempt + 1 == APPEND_TRIES:
                        raise  # the outcome is unknown
        except BaseException:
            # self.state holds events the log may not: fold the log again before going on.
            journal.loaded = False
            raise
        assert appended is not None
        journal.version = appended.version
        journal.written = appended
        self._service().appended(category)
        await self._maybe_snapshot(stream)
        return Written(stream, appended.version, category, appended.position)

    @property
    def last_written(self) -> Written | None:
        """The token of this activation's last append (for a method to return to its caller)."""
        journal = self._journal()
        appended = journal.written
        if appended is None:
            return None
        return Written(journal.stream, appended.version, journal.category, appended.position)

    # -- the machinery ---------------------------------------------------------------------------

    def _journal(self) -> Journal:
        try:
            return self._es
        except AttributeError:
            self._es = Journal()
            return self._es

    def _service(self) -> Any:
        journal = self._journal()
        if journal.handle is None:
            journal.handle = self._context.service("events")
        return journal.handle

    def _queued_appends(self) -> QueueAppend | None:
        journal = self._journal()
        queue = journal.queue_append
        if queue is False:
            queue = journal.queue_append = getattr(self._log(), "queue_append", None)
        return cast("QueueAppend | None", queue)

    def _snapshot_every(self) -> int:
        return self.__es_snapshot_every__

    def _log(self) -> EventLog:
        return cast(EventLog, self._service().log)

    def _storage(self) -> StorageProvider:
        return cast(StorageProvider, self._service().storage)

    async def _load(self) -> None:
        """Fold the log into the state. One fold at a time: a turn and an interleaving one
        (a read, a tick) that both find the state unloaded wait for the same fold (two folds
        ending one after the other left the second's state, wiping the events the first
        one's turn had raised meanwhile)."""
        journal = self._journal()
        loading = journal.loading
        if loading is None or loading.done():
            loading = journal.loading = asyncio.ensure_future(self._fold())
            loading.add_done_callback(_retrieved)
        await asyncio.shield(loading)

    async def _fold(self) -> None:
        journal = self._journal()
        actor_id = self._context.actor_id
        journal.stream = stream = stream_of(actor_id)
        journal.category = actor_id.type_name
        state, version = await self._read_snapshot(stream)
        journal.snapshot_version = version
        log = self._log()
        events = self.__es_events__
        while True:
            page = await log.read_stream(stream, version + 1, _PAGE)
            for stored in page:
                state = self.apply(state, events.build(stored, type(self).upcast))
                version = stored.version
            if len(page) < _PAGE:
                break
        self.state = state
        journal.version = version
        journal.pending = []
        journal.loaded = True

    async def _read_snapshot(self, stream: str) -> tuple[S, int]:
        journal = self._journal()
        storage = self._storage()
        found: list[tuple[int, bytes]] = []
        for slot in range(self.__es_snapshots_kept__ if self.__es_snapshot_every__ else 0):
            record = await storage.read(snapshot_id(stream, slot))
            journal.snapshot_etags[slot] = record.etag
            if record.data is not None:
                found.append((slot, record.data))
        best: tuple[S, int] | None = None
        for slot, data in found:
            try:
                version, body = decode(data)
                if best is None or version > best[1]:
                    best = (
                        decode_state(body, self.__es_state_type__, str(self.context.id)),
                        version,
                    )
            except Exception as exc:  # an unreadable snapshot: an older one, or a full replay
                get_logger().warning(
                    "snapshot_unreadable", actor=str(self.context.id), slot=slot, error=repr(exc)
                )
        return best if best is not None else (self.initial_state(), 0)

    async def _maybe_snapshot(self, stream: str) -> None:
        journal = self._journal()
        every = self.__es_snapshot_every__
        if not snapshot_due(journal, every):  # (the turn's events are appended: none pending)
            return
        slot = (journal.version // every) % self.__es_snapshots_kept__
        try:
            data = encode([journal.version, encode_state(self.state)])
        except Exception as exc:  # (SerializationError; whatever a value's own hooks raise)
            # The events are stored and the turn stands, as with a write that fails; this
            # snapshot is skipped (replays start from an older one), the next is tried.
            journal.snapshot_version = journal.version
            get_logger().warning("snapshot_failed", actor=str(self.context.id), error=repr(exc))
            return
        record = snapshot_id(stream, slot)
        try:
            journal.snapshot_etags[slot] = await self._storage().write(
                record, data, journal.snapshot_etags.get(slot)
            )
            journal.snapshot_version = journal.version
        except (InconsistentStateError, StorageError) as exc:
            # A snapshot only shortens replays: the events are stored, so the turn stands.
            get_logger().warning("snapshot_failed", actor=str(self.context.id), error=repr(exc))
            try:
                journal.snapshot_etags[slot] = (await self._storage().read(record)).etag
            except StorageError:
                journal.snapshot_etags.pop(slot, None)  # the next snapshot of it fails alike


def _loading_first(hook: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(hook)
    async def on_activate(self: EventSourcedActor[Any, Any]) -> None:
        if not self._journal().loaded:
            await self._load()
        await _appending(hook)(self)

    return on_activate


def _appending(hook: Callable[..., Any]) -> Callable[..., Any]:
    """A lifecycle hook (``on_activate``, ``on_deactivate``) whose events are appended before
    it returns, as a method's (no turn end would append them: they were applied, then
    appended by the next command, or never)."""

    @functools.wraps(hook)
    async def appending(self: EventSourcedActor[Any, Any], *args: Any, **kwargs: Any) -> Any:
        try:
            result = await hook(self, *args, **kwargs)
        except BaseException:
            forget_pending(self)
            raise
        journal = self._journal()
        if journal.pending:
            await self.confirm_events()
        if journal.stale:  # an apply raised, caught by the hook: fold before the next call
            journal.stale = journal.loaded = False
        return result

    return appending


def _retrieved(loading: asyncio.Future[None]) -> None:
    # Its error reaches the turns that waited; with none left waiting, asyncio would log it.
    if not loading.cancelled():
        loading.exception()
