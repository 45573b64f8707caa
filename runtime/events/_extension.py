"""Event sourcing as a silo capability: how it plugs into the kernel's extensions.

- ``attach``: actors reach the event log (``self._context.service("events")``) through the
  silo's services.
- ``start`` / ``view_changed``: activate the projections this silo owns on the ring, so that
  they run (and, after a failure, resume on their new owner) without waiting for a call.
- ``activated`` / ``deactivating``: a projection's catch-up loop lives as long as its
  activation; ``deactivation_begun`` fails the reads still waiting for it (retryable), so that
  a read with a long ``timeout`` does not hold a handover or a shutdown up.
- ``stats``: each projection's position and the events it applied.

An append made on this silo wakes the local projections that read its category at once;
others find it at their next poll (``Projection.poll_interval``) or when a read-your-writes
query asks for it.
"""

from __future__ import annotations

from typing import Any

from raygrain.actors import ActorId, ConfigurationError, DeactivationReason
from raygrain.runtime.events._projection import PROJECTION_KEY, Projection, SqlProjection
from raygrain.runtime.events._runner import ProjectionRunner
from raygrain.runtime.kernel import Activation, Extension, MembershipView, Silo, get_logger
from raygrain.storage import EventLog, SqlTransactions, StorageProvider

__all__ = ["EventsService"]

EXTRAS_KEY = "events"


class EventsHandle:
    """What an activation sees of the capability (``service("events")``)."""

    __slots__ = ("_activation", "_service", "appended")

    def __init__(self, service: EventsService, activation: Activation) -> None:
        self._service = service
        self._activation = activation
        # appended(category): events were appended to it (the silo's projections wake).
        self.appended = service.appended

    @property
    def log(self) -> EventLog:
        return self._service.log

    @property
    def storage(self) -> StorageProvider:
        return self._service.storage

    def runner(self) -> ProjectionRunner:
        extras = self._activation.extras or {}
        runner = extras.get(EXTRAS_KEY)
        if not isinstance(runner, ProjectionRunner):
            raise ConfigurationError(f"{self._activation.actor_id} is not a running projection")
        return runner


class EventsService(Extension):
    """Event-sourced actors and projections on one silo."""

    def __init__(self) -> None:
        self.silo: Silo
        self.runners: dict[str, ProjectionRunner] = {}  # projection type name -> runner here
        self._log: EventLog | None = None

    @property
    def storage(self) -> StorageProvider:
        return self.silo.storage

    @property
    def log(self) -> EventLog:
        if self._log is not None:
            return self._log
        storage = self.silo.storage
        # (Checked once: isinstance on a runtime protocol looks up every method by name.)
        if not isinstance(storage, EventLog):
            raise ConfigurationError(
                f"event sourcing needs a storage provider with an event log; "
                f"{type(storage).__name__} has none (use memory, sqlite or postgresql)"
            )
        self._log = storage
        return storage

    def attach(self, silo: Silo) -> None:
        self.silo = silo
        for name in silo.registry.names():
            cls = silo.registry.resolve(name)
            if issubclass(cls, SqlProjection) and not isinstance(silo.storage, SqlTransactions):
                inner = getattr(silo.storage, "inner", silo.storage)
                raise ConfigurationError(
                    f"{name} keeps its read model in SQL tables, which needs the cluster's "
                    f"state in a SQL database (storage='sqlite:///...' or 'postgresql://...'); "
                    f"this cluster stores it in {type(inner).__name__}"
                )
        silo.provide_service("events", lambda activation: EventsHandle(self, activation))

    def start(self, silo: Silo) -> None:
        self._claim()

    def view_changed(self, silo: Silo, view: MembershipView) -> None:
        self._claim()

    def activated(self, activation: Activation) -> None:
        instance = activation.instance
        if isinstance(instance, Projection):
            try:
                owned = self.silo.hosts(activation.actor_id)
            except LookupError:
                owned = False
            if not owned:  # the view moved on while it activated: its owner runs it
                activation.begin_deactivation(DeactivationReason.HANDOVER)
                return
            runner = ProjectionRunner(
                self, instance, activation.actor_id.type_name, isinstance(instance, SqlProjection)
            )
            if activation.extras is None:
                activation.extras = {}
            activation.extras[EXTRAS_KEY] = runner
            self.runners[runner.name] = runner
            runner.start()

    def deactivation_begun(self, activation: Activation, reason: DeactivationReason) -> None:
        runner = activation.extras.get(EXTRAS_KEY) if activation.extras else None
        if isinstance(runner, ProjectionRunner):
            runner.release_waiters()  # (reads waiting would hold the deactivation up)

    def deactivating(self, activation: Activation, reason: DeactivationReason) -> None:
        runner = activation.extras.get(EXTRAS_KEY) if activation.extras else None
        if isinstance(runner, ProjectionRunner):
            runner.stop()
            if self.runners.get(runner.name) is runner:
                del self.runners[runner.name]

    def appended(self, category: str) -> None:
        for runner in self.runners.values():
            if category in runner.positions:
                runner.wake()

    def stats(self, silo: Silo) -> dict[str, Any]:
        if not self.runners:
            return {}
        return {
            "projections": {
                name: {
                    "positions": dict(r.positions),
                    "applied": r.applied,
                    "error": r.last_error,
                    "failures": r.failures,
                }
                for name, r in self.runners.items()
            }
        }

    def _claim(self) -> None:
        """Activate the projections this silo owns, and hand over those it no longer owns (an
        activation elsewhere, left over from an older view, is handed over by its own silo;
        the offsets' ETags fence it meanwhile)."""
        silo = self.silo
        if silo.closed:
            return
        for name in list(self.runners):
            activation = silo.activations.get(ActorId(name, PROJECTION_KEY))
            try:
                owned = silo.hosts(ActorId(name, PROJECTION_KEY))
            except LookupError:
                owned = False
            if activation is not None and not owned:
                activation.begin_deactivation(DeactivationReason.HANDOVER)
        for name in silo.registry.names():
            cls = silo.registry.resolve(name)
            if not issubclass(cls, Projection):
                continue
            actor_id = ActorId(name, PROJECTION_KEY)
            try:
                if silo.hosts(actor_id):
                    silo.activation_of(actor_id)
            except LookupError:  # an empty ring: the cluster is going down
                return
            except Exception as exc:
                get_logger().error("projection_claim_failed", projection=name, error=repr(exc))
