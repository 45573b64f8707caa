"""Reminders: durable, ring-owned schedules that activate their actor when they fire.

The silo that owns an actor on the placement ring owns its reminders. It loads the reminders
of its ring ranges from the storage provider's reminder table (never the whole table), fires
each on the silo's ``Schedule`` as a turn calling ``on_reminder(name, tick)`` (activating the
actor first if need be), and records each delivered occurrence (``ack``, batched). A change of
membership drops at once the reminders this silo no longer owns, and loads those it gained.

Delivery: never early; an occurrence is delivered at least once (a tick that could not be
delivered is tried again after ``retry_delay``), and at most once in steady state. A new owner
starts from the last recorded occurrence: the occurrences it missed are coalesced into one
late tick standing for the latest of them, then the original schedule goes on. A duplicate is
possible only for a tick delivered by the old owner whose ack was not yet stored when the
ownership moved (a crash, or a handover mid-tick).
"""

from __future__ import annotations

import asyncio
import builtins
import math
from collections.abc import Callable
from functools import partial
from typing import Protocol

from raygrain.actors import (
    Actor,
    ActorId,
    ConfigurationError,
    InvalidScheduleError,
    RaygrainError,
    Reminder,
    ReminderTick,
    UnknownActorTypeError,
)
from raygrain.runtime.kernel import (
    DROPPED,
    Activation,
    ActivationState,
    Silo,
    TurnOutcome,
    get_logger,
    run_as_turn,
)
from raygrain.runtime.timers._schedule import Entry, Schedule
from raygrain.runtime.timers._settings import ReminderSettings, check_delay, check_name
from raygrain.storage import ReminderAck, ReminderRecord, ReminderTable

__all__ = ["ActorReminders", "Reminders"]

_Key = tuple[ActorId, str]


class TimeService(Protocol):
    """What reminders use of the silo's time service (``_extension.TimeService``)."""

    silo: Silo
    schedule: Schedule
    settings: ReminderSettings
    reminders: Reminders
    ticks_running: int  # timer and reminder turns queued or running
    lateness_observers: list[Callable[[str, float], None]]

    def now(self) -> float: ...


# Seconds between tries of a reminder whose actor type is not registered on the cluster (and
# between its log lines, per type).
_UNKNOWN_TYPE_RETRY = 60.0


class _Owned:
    """A reminder this silo fires: its record, the next occurrence, its schedule entry. It is
    its own schedule callback (no closure per tick: 100,000 reminders re-arm all the time)."""

    __slots__ = ("entry", "firing", "next", "owned_in_view", "owner", "record", "removed", "turn")

    def __init__(self, owner: Reminders, record: ReminderRecord, next_tick: float) -> None:
        self.owner = owner
        self.record = record
        self.next = next_tick
        self.entry: Entry | None = None
        self.firing = False
        self.removed = False
        self.turn = f"reminder {record.name}"  # the turn's name (the metrics' method label)
        # The membership view version in which this silo last found it owns the actor: a tick
        # in the same view skips hashing the actor onto the ring again.
        self.owned_in_view = -1

    def __call__(self) -> None:
        self.owner._fire(self)

    def drop(self) -> None:
        self.removed = True
        if self.entry is not None:
            self.entry.cancel()
            self.entry = None


def next_occurrence(record: ReminderRecord, after: float | None, now: float) -> float:
    """The occurrence to fire next: the first one after ``after`` (the last delivered), or,
    when that is already past, the latest one due by ``now`` (the missed ones coalesced)."""
    first, period = record.first_tick, record.period
    # Always first + n * period with n whole, never a running sum (which drifts).
    upcoming = first if after is None else first + (round((after - first) / period) + 1) * period
    if upcoming >= now:
        return upcoming
    return first + math.floor((now - first) / period) * period


class Reminders:
    """The reminders one silo owns."""

    def __init__(self, service: TimeService) -> None:
        self.service = service
        self.owned: dict[_Key, _Owned] = {}
        self.delivered = 0  # ticks delivered (returned or raised), for tests and benchmarks
        self._acks: list[ReminderAck] = []
        self._flusher: asyncio.Task[None] | None = None  # the task storing acks, if any
        self._loading: asyncio.Task[None] | None = None
        self._reload = False
        self._fresh: set[str] = set()  # etags adopted while a load may be running
        self._unknown_logged: dict[str, float] = {}  # type name -> when last logged

    @property
    def loading(self) -> bool:
        return self._loading is not None

    @property
    def acking(self) -> bool:
        """Whether delivered ticks are still on their way to storage."""
        return self._flusher is not None

    async def flush_acks(self, timeout: float) -> None:
        """Wait (up to ``timeout`` seconds) for the acks on their way to be stored: a silo that
        leaves must not take them along, or the next owner delivers those ticks again."""
        if self._flusher is not None:
            await asyncio.wait({self._flusher}, timeout=timeout)

    @property
    def table(self) -> ReminderTable:
        storage = self.service.silo.storage
        if not isinstance(storage, ReminderTable):
            raise ConfigurationError(
                f"reminders need a storage provider with a reminder table; "
                f"{type(storage).__name__} has none"
            )
        return storage

    # -- ownership ------------------------------------------------------------------------------

    def reload(self) -> None:
        """Load the reminders of this silo's ring ranges (again), in the background."""
        silo = self.service.silo
        if not isinstance(silo.storage, ReminderTable) or silo.closed:
            return
        self._drop_unowned()
        if self._loading is not None:
            self._reload = True  # once the running load ends
            return
        self._loading = silo.spawn(self._load())

    async def _load(self) -> None:
        silo = self.service.silo
        try:
            while True:
                self._reload = False
                ring = silo.membership.ring
                if silo.name in ring.silos:
                    await self._load_ranges(ring.ranges_of(silo.name))
                if not self._reload:
                    return
        except Exception as exc:  # (storage unreachable...): the next refresh tries again
            get_logger().error("reminders_load_failed", silo=silo.name, error=repr(exc))
        finally:
            self._loading = None

    async def _load_ranges(self, ranges: list[tuple[int, int]]) -> None:
        loaded = {(r.actor_id, r.name): r for r in await self.table.reminders_in(ranges)}
        for key, record in loaded.items():
            found = self.owned.get(key)
            changed = found is None or found.record.etag != record.etag
            if changed and self.owns(record.actor_id):
                self.adopt(record, record.last_tick)
        for key, owned in list(self.owned.items()):
            # Removed elsewhere (and not registered here while this load ran): stop it.
            if key not in loaded and not owned.firing and owned.record.etag not in self._fresh:
                self.forget(*key)
        self._fresh.clear()

    def owns(self, actor_id: ActorId) -> bool:
        """Whether this silo owns ``actor_id`` (and so its reminders) on the ring now."""
        try:
            return self.service.silo.hosts(actor_id)
        except LookupError:  # an empty ring: the cluster is going down
            return False

    def _drop_unowned(self) -> None:
        for key, owned in list(self.owned.items()):
            if not self.owns(key[0]):
                owned.drop()
                del self.owned[key]

    def adopt(self, record: ReminderRecord, last_tick: float | None) -> None:
        """Fire ``record`` from here on (replacing an older registration of it)."""
        key = (record.actor_id, record.name)
        old = self.owned.get(key)
        if old is not None:
            old.drop()
        owned = _Owned(self, record, next_occurrence(record, last_tick, self.service.now()))
        self.owned[key] = owned
        if self._loading is not None:
            self._fresh.add(record.etag)
        self._arm(owned, owned.next)

    def forget(self, actor_id: ActorId, name: str) -> None:
        owned = self.owned.pop((actor_id, name), None)
        if owned is not None:
            owned.drop()

    def drop_all(self) -> None:
        for owned in self.owned.values():
            owned.drop()
        self.owned.clear()

    # -- firing ---------------------------------------------------------------------------------

    def _arm(self, owned: _Owned, when: float) -> None:
        owned.entry = self.service.schedule.at(when, owned)

    def _fire(self, owned: _Owned) -> None:
        owned.entry = None
        if owned.removed:
            return
        record = owned.record
        silo = self.service.silo
        view = silo.membership.view.version
        if owned.owned_in_view != view or silo.closed:
            if not self.owns(record.actor_id):
                self.forget(record.actor_id, record.name)
                return
            owned.owned_in_view = view
        try:
            activation = silo.activation_of(record.actor_id)
        except RaygrainError as exc:  # e.g. its type is not registered on this cluster
            now = self.service.now()
            delay = self.service.settings.retry_delay
            if isinstance(exc, UnknownActorTypeError):
                # Its class is not deployed (removed, or not yet back in a rolling upgrade):
                # tried again each minute, and said once a minute per type, not every second.
                delay = max(delay, _UNKNOWN_TYPE_RETRY)
                type_name = record.actor_id.type_name
                if now - self._unknown_logged.get(type_name, -math.inf) < _UNKNOWN_TYPE_RETRY:
                    self._arm(owned, now + delay)
                    return
                self._unknown_logged[type_name] = now
            get_logger().error(
                "reminder_undeliverable",
                actor=str(record.actor_id),
                reminder=record.name,
                error=repr(exc),
                retry_in=delay,
            )
            self._arm(owned, now + delay)
            return
        tick = ReminderTick(record.first_tick, record.period, owned.next)
        owned.firing = True
        self.service.ticks_running += 1

        service = self.service

        async def deliver() -> None:
            assert activation.instance is not None
            if service.lateness_observers:
                late = service.now() - tick.scheduled
                for observe in service.lateness_observers:
                    observe(record.actor_id.type_name, late)
            await activation.instance.on_reminder(record.name, tick)

        run_as_turn(activation, owned.turn, deliver, partial(self._ticked, owned))

    def _ticked(self, owned: _Owned, result: TurnOutcome) -> None:
        self.service.ticks_running -= 1
        owned.firing = False
        record = owned.record
        now = self.service.now()
        if result == DROPPED:
            # The activation went away (or failed to activate) first: deliver it again soon.
            if not owned.removed:
                self._arm(owned, now + self.service.settings.retry_delay)
            return
        self.delivered += 1
        if isinstance(result, Exception):
            # Logged; the occurrence counts as delivered, and the next one comes on schedule.
            get_logger().warning(
                "reminder_tick_failed",
                actor=str(record.actor_id),
                reminder=record.name,
                error=repr(result),
            )
        self._ack(ReminderAck(record.actor_id, record.name, record.etag, owned.next))
        if owned.removed:
            return
        owned.next = next_occurrence(record, owned.next, now)
        self._arm(owned, owned.next)

    def _ack(self, ack: ReminderAck) -> None:
        self._acks.append(ack)
        if self._flusher is None:
            self._flusher = self.service.silo.spawn(self._flush_acks())

    async def _flush_acks(self) -> None:
        try:
            while self._acks:
                batch, self._acks = self._acks, []
                try:
                    await self.table.ack_reminders(batch)
                except Exception as exc:
                    # Only a failover could repeat these ticks; keep going.
                    get_logger().warning(
                        "reminder_acks_failed", silo=self.service.silo.name, error=repr(exc)
                    )
        finally:
            self._flusher = None


class ActorReminders:
    """``actor.reminders``: one actor's durable reminders (``raygrain.actors.Reminders``)."""

    __slots__ = ("_activation", "_service")

    def __init__(self, activation: Activation, service: TimeService) -> None:
        self._activation = activation
        self._service = service

    def _check(self, what: str) -> tuple[ActorId, ReminderTable]:
        activation = self._activation
        actor = activation.actor_id
        if activation.options.stateless_worker:
            raise InvalidScheduleError(
                f"{actor}: a stateless worker has no reminders (it has no single owner); "
                "register the reminder on a stateful actor"
            )
        if activation.state not in (ActivationState.ACTIVATING, ActivationState.VALID):
            raise InvalidScheduleError(
                f"{actor}: reminders {what} outside the actor's activation "
                f"(it is {activation.state.value})"
            )
        return actor, self._service.reminders.table

    async def register(self, name: str, *, due: float, period: float) -> Reminder:
        actor, table = self._check("registered")
        name = check_name(f"{actor}: reminder name", name)
        cls = type(self._activation.instance)
        if getattr(cls, "on_reminder", Actor.on_reminder) is Actor.on_reminder:
            # Every tick would fail (Orleans refuses a grain that is not IRemindable too).
            raise InvalidScheduleError(
                f"{actor}: reminder {name!r} registered by {cls.__qualname__}, which has no "
                "'async def on_reminder(self, name, tick)' of its own"
            )
        due = check_delay(f"{actor}: reminder {name!r} due", due, positive=False)
        period = check_delay(f"{actor}: reminder {name!r} period", period, positive=True)
        minimum = self._service.settings.minimum_period
        if period < minimum:
            raise InvalidScheduleError(
                f"{actor}: reminder {name!r} period {period!r} s is below the cluster's "
                f"minimum of {minimum!r} s (ReminderSettings.minimum_period); use a timer for "
                "short periods"
            )
        record = await table.upsert_reminder(actor, name, self._service.now() + due, period)
        reminders = self._service.reminders
        if reminders.owns(actor):
            reminders.adopt(record, None)
        else:  # mid-handover: the new owner's load (or its next refresh) picks it up
            reminders.forget(actor, name)
        return _public(record)

    async def get(self, name: str) -> Reminder | None:
        actor, table = self._check("read")
        name = check_name(f"{actor}: reminder name", name)
        found = [r for r in await table.reminders_of(actor) if r.name == name]
        return _public(found[0]) if found else None

    async def list(self) -> builtins.list[Reminder]:
        actor, table = self._check("listed")
        return sorted((_public(r) for r in await table.reminders_of(actor)), key=_by_name)

    async def unregister(self, reminder: Reminder | str) -> bool:
        actor, table = self._check("unregistered")
        if isinstance(reminder, Reminder):
            name, etag = reminder.name, reminder.etag
        else:
            name, etag = check_name(f"{actor}: reminder name", reminder), None
        removed = await table.remove_reminder(actor, name, etag)
        self._service.reminders.forget(actor, name)
        return removed


def _public(record: ReminderRecord) -> Reminder:
    return Reminder(record.name, record.first_tick, record.period, record.etag)


def _by_name(reminder: Reminder) -> str:
    return reminder.name
