"""Sagas as a silo capability: how they plug into the kernel's extensions.

- ``attach``: saga actors reach their driver (``"saga"``) and the index shards this service
  (``"sagas"``) through the silo's services; the settings come from ``SiloOptions``
  (``SagaSettings``); time and scheduling are the time capability's (``TimeService``), so
  that a test clock (``ManualClock``) drives backoffs and timeouts too.
- ``activated``: a saga activation that finds its saga live resumes it (after a crash, a
  failover, a restart, or an idle deactivation).
- ``deactivating``: its driver stops (its pending backoff with it).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from raygrain.actors import ActorId, ConfigurationError, DeactivationReason
from raygrain.runtime.kernel import Activation, Extension, Silo
from raygrain.runtime.sagas._definition import check_seconds
from raygrain.runtime.sagas._driver import EXTRAS_KEY, SagaDriver
from raygrain.runtime.sagas._index import IndexWriter
from raygrain.runtime.sagas._record import SagaPhase
from raygrain.runtime.sagas._saga import Saga
from raygrain.runtime.timers import TimeService

__all__ = ["SagaService", "SagaSettings"]


@dataclass(frozen=True, slots=True)
class SagaSettings:
    """Given to a cluster as ``sagas=SagaSettings(...)``. ``wake_period``: how often the saga
    index wakes the live sagas (at least the reminders' ``minimum_period``): after a crash or
    a restart a saga resumes within it. ``keep_finished``: how many ended sagas each of the 16
    index shards of a saga type lists (the oldest are dropped from the list, not from storage;
    a shard stores its whole list on every change, so a long list costs every start and end).
    ``retry_delay``: how soon an advance whose commit failed is tried again."""

    wake_period: float = 60.0
    keep_finished: int = 1_000
    retry_delay: float = 1.0

    def __post_init__(self) -> None:
        for label in ("wake_period", "retry_delay"):
            check_seconds(f"SagaSettings.{label}", getattr(self, label))
        if not isinstance(self.keep_finished, int) or isinstance(self.keep_finished, bool):
            raise ConfigurationError(
                f"SagaSettings.keep_finished must be an int, got {self.keep_finished!r}"
            )
        if self.keep_finished < 0:
            raise ConfigurationError(
                f"SagaSettings.keep_finished must be >= 0, got {self.keep_finished!r}"
            )


class SagaService(Extension):
    """Sagas on one silo."""

    def __init__(self) -> None:
        self.settings = SagaSettings()
        self.silo: Silo
        self.time: TimeService
        self.index: IndexWriter

    def attach(self, silo: Silo) -> None:
        time = silo.extension(TimeService)
        if time is None:
            raise ConfigurationError("sagas need the time capability (TimeService) on the silo")
        self.silo = silo
        self.time = time
        self.index = IndexWriter(silo)
        self.settings = silo.options.setting(SagaSettings, SagaSettings())
        silo.provide_service("saga", lambda a: SagaDriver.of(a, self))
        silo.provide_service("sagas", lambda a: self)

    def activated(self, activation: Activation) -> None:
        saga = activation.instance
        if isinstance(saga, Saga):
            driver = SagaDriver.of(activation, self)
            driver.resumed = saga.state.phase == SagaPhase.RUNNING.value
            # Its phase is recorded in the index again before it goes on: the index may hold
            # it in another (an end never recorded, or parked while its code was away).
            driver.reported = ""
            driver.kick()

    def deactivating(self, activation: Activation, reason: DeactivationReason) -> None:
        driver = activation.extras.get(EXTRAS_KEY) if activation.extras else None
        if driver is not None:
            driver.stop()

    def now(self) -> float:
        return self.time.now()

    def wake_period(self) -> float:
        return max(self.settings.wake_period, self.time.settings.minimum_period)

    def record(self, saga: ActorId, phase: str) -> asyncio.Future[None]:
        """Record ``saga`` in ``phase`` in the saga index (batched with this silo's others)."""
        return self.index.record(saga, phase)
