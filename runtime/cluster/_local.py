"""The in-process backend of ``Cluster.local`` (silos in this process over an in-process
transport), the protocol every backend implements, and the checks of the cluster options."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Protocol

from raygrain.actors import ConfigurationError
from raygrain.runtime._capabilities import client_filters, metrics_registry, silo_extensions
from raygrain.runtime.kernel import (
    DEFAULT_GC_THRESHOLD,
    DEFAULT_SWITCH_INTERVAL,
    ActorRegistry,
    Caller,
    CallSettings,
    Clock,
    LocalTransport,
    Membership,
    Silo,
    SiloOptions,
    SiloStatus,
    check_gc_threshold,
    check_switch_interval,
)
from raygrain.runtime.metrics import MetricRegistry, MetricsSettings, PrometheusExporter
from raygrain.runtime.sagas import SagaSettings
from raygrain.runtime.streams import StreamSettings
from raygrain.runtime.timers import ReminderSettings
from raygrain.runtime.tracing import TracingSettings
from raygrain.runtime.transactions import TransactionSettings
from raygrain.storage import StorageProvider, open_storage

__all__ = ["Backend", "LocalBackend", "backend_options"]


class Backend(Protocol):
    def make_caller(self, registry: ActorRegistry) -> Caller: ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def stats(self) -> list[dict[str, Any]]: ...


class LocalBackend:
    """Silos in this process, over an in-process transport."""

    def __init__(
        self,
        registry: ActorRegistry,
        silos: int,
        storage: StorageProvider | str,
        clock: Clock,
        options: SiloOptions,
        metrics_port: int | None = None,
    ) -> None:
        self.owns_storage = isinstance(storage, str)
        self.storage = open_storage(storage)
        self.transport = LocalTransport()
        self.membership = Membership()
        self.options = options
        self.silos = [
            Silo(
                f"silo-{index}",
                registry,
                self.storage,
                self.transport,
                self.membership,
                clock,
                options,
                silo_extensions(options),
            )
            for index in range(silos)
        ]
        for silo in self.silos:
            self.transport.register_silo(silo.name, silo)
        self.registries: list[MetricRegistry] = [
            r for silo in self.silos if (r := metrics_registry(silo)) is not None
        ]
        self.metrics_port = metrics_port
        self.metrics: PrometheusExporter | None = None
        self._closing: asyncio.Task[None] | None = None

    def make_caller(self, registry: ActorRegistry) -> Caller:
        address = f"client-{uuid.uuid4().hex[:8]}"
        filters = client_filters(self.options)
        caller = Caller(
            address,
            self.transport,
            self.membership,
            registry,
            self.options.calls,
            filters=filters,
        )
        client_registry = metrics_registry(filters)
        if client_registry is not None:
            self.registries.append(client_registry)
        self.transport.register(address, caller)
        return caller

    async def start(self) -> None:
        started: list[Silo] = []
        try:
            if self.registries:
                self.metrics = PrometheusExporter(lambda: self.registries, self.metrics_port)
            for silo in self.silos:
                started.append(silo)  # (first: one failing half-way holds what it took)
                silo.start()
                self.membership.set_status(silo.name, SiloStatus.ACTIVE)
        except BaseException:
            # Undone here (Cluster.start relies on it): the silos started stop and give back
            # what they hold (the process's settings), the store it opened closes.
            await self._close(started)
            raise

    async def aclose(self) -> None:
        # Shielded, as a silo's: a caller cancelled meanwhile (a timeout around the close)
        # must not leave silos half closed and the store open, with no way to finish.
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._close(self.silos))
        await asyncio.shield(self._closing)

    async def _close(self, silos: list[Silo]) -> None:
        for silo in silos:
            self.membership.set_status(silo.name, SiloStatus.SHUTTING_DOWN)
        for silo in silos:
            await silo.aclose()
        if self.owns_storage:
            await self.storage.aclose()
        if self.metrics is not None:
            self.metrics.close()

    async def stats(self) -> list[dict[str, Any]]:
        return [silo.stats() for silo in self.silos]


def backend_options(
    default_timeout: float,
    default_idle_timeout: float,
    collection_period: float,
    max_message_bytes: int,
    deactivation_timeout: float,
    transactions: TransactionSettings | None = None,
    max_queued_calls: int = 10_000,
    reminders: ReminderSettings | None = None,
    metrics: MetricsSettings | None = None,
    sagas: SagaSettings | None = None,
    streams: StreamSettings | None = None,
    tracing: TracingSettings | None = None,
    gc_threshold: int | None = DEFAULT_GC_THRESHOLD,
    switch_interval: float | None = DEFAULT_SWITCH_INTERVAL,
) -> SiloOptions:
    for label, value in (
        ("default_timeout", default_timeout),
        ("default_idle_timeout", default_idle_timeout),
        ("collection_period", collection_period),
        ("max_message_bytes", max_message_bytes),
        ("deactivation_timeout", deactivation_timeout),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigurationError(f"{label} must be a positive number, got {value!r}")
    if not isinstance(max_queued_calls, int) or max_queued_calls < 1:
        raise ConfigurationError(f"max_queued_calls must be an int >= 1, got {max_queued_calls!r}")
    if transactions is None:
        transactions = TransactionSettings()
    elif not isinstance(transactions, TransactionSettings):
        raise ConfigurationError(
            f"transactions must be a TransactionSettings, got {type(transactions).__name__}"
        )
    if reminders is None:
        reminders = ReminderSettings()
    elif not isinstance(reminders, ReminderSettings):
        raise ConfigurationError(
            f"reminders must be a ReminderSettings, got {type(reminders).__name__}"
        )
    if sagas is None:
        sagas = SagaSettings()
    elif not isinstance(sagas, SagaSettings):
        raise ConfigurationError(f"sagas must be a SagaSettings, got {type(sagas).__name__}")
    if streams is not None and not isinstance(streams, StreamSettings):
        raise ConfigurationError(f"streams must be a StreamSettings, got {type(streams).__name__}")
    if tracing is not None and not isinstance(tracing, TracingSettings):
        raise ConfigurationError(f"tracing must be a TracingSettings, got {type(tracing).__name__}")
    try:
        gc_threshold = check_gc_threshold(gc_threshold)
        switch_interval = check_switch_interval(switch_interval)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    calls = CallSettings(float(default_timeout), int(max_message_bytes))
    return SiloOptions(
        default_idle_timeout=float(default_idle_timeout),
        collection_period=float(collection_period),
        deactivation_timeout=float(deactivation_timeout),
        max_queued_calls=max_queued_calls,
        calls=calls,
        # (A client of a running deployment knows none of its stream settings: no entry.)
        capabilities=(
            transactions,
            reminders,
            metrics or MetricsSettings(),
            sagas,
            *(() if streams is None else (streams,)),
            *(() if tracing is None else (tracing,)),
        ),
        gc_threshold=gc_threshold,
        switch_interval=switch_interval,
    )
