"""``Cluster``: the user's handle on a set of silos, and the client that calls into them.

``Cluster.local`` runs N silos in this process over an in-process transport (the embedded
default: no server to set up). ``Cluster.ray`` runs silos as Ray actors, and
``Cluster.connect`` joins silos already running on Ray (``raygrain up``). Either way the
cluster is an async context manager, ``get`` returns actor references, and ``aclose``
deactivates every activation it started.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterable
from typing import Any, NoReturn, TypeVar, cast

from raygrain.actors import (
    Actor,
    ActorId,
    ActorKey,
    ActorRef,
    ClusterClosedError,
    ClusterNotStartedError,
    ConfigurationError,
    InvalidCallError,
    UnknownActorTypeError,
)
from raygrain.runtime._capabilities import actor_types
from raygrain.runtime.cluster._local import Backend, LocalBackend, backend_options
from raygrain.runtime.cluster._transactions import ClusterTransactions
from raygrain.runtime.kernel import (
    DEFAULT_GC_THRESHOLD,
    DEFAULT_SWITCH_INTERVAL,
    ActorRegistry,
    Clock,
    Silo,
    SystemClock,
)
from raygrain.runtime.membership import FailureDetection
from raygrain.runtime.metrics import MetricsSettings, PrometheusExporter
from raygrain.runtime.sagas import SagaSettings
from raygrain.runtime.streams import ClusterStreams, StreamSettings
from raygrain.runtime.timers import ReminderSettings
from raygrain.runtime.tracing import TracingSettings
from raygrain.runtime.transactions import TransactionSettings
from raygrain.runtime.wire import TLSFiles
from raygrain.storage import StorageProvider

__all__ = ["Cluster"]

A = TypeVar("A", bound=Actor[Any])


class Cluster(ClusterTransactions):
    """A running raygrain cluster as seen by a client. Build one with ``Cluster.local``,
    ``Cluster.ray`` or ``Cluster.connect`` and use it as ``async with``."""

    def __init__(self, registry: ActorRegistry, backend: Backend) -> None:
        self._registry = registry
        self._backend = backend
        self._caller = backend.make_caller(registry)
        self._started = False
        self.closed = False
        self._closing: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the one that started it
        # A client of a running deployment (Cluster.connect): its classes are optional, so a
        # class given to get() joins its registry (the deployment checks the call). A cluster
        # that hosts the silos refuses a class it does not host.
        self._learns_types = False
        self._streams: ClusterStreams | None = None

    @classmethod
    def local(
        cls,
        actors: Iterable[type[Actor[Any]]],
        *,
        silos: int = 2,
        storage: StorageProvider | str = "memory://",
        clock: Clock | None = None,
        default_timeout: float = 30.0,
        default_idle_timeout: float = 15 * 60.0,
        collection_period: float = 60.0,
        max_message_bytes: int = 16 * 1024 * 1024,
        deactivation_timeout: float = 30.0,
        transactions: TransactionSettings | None = None,
        max_queued_calls: int = 10_000,
        reminders: ReminderSettings | None = None,
        metrics: bool | MetricsSettings = True,
        metrics_port: int | None = None,
        sagas: SagaSettings | None = None,
        streams: StreamSettings | None = None,
        tracing: TracingSettings | None = None,
        gc_threshold: int | None = DEFAULT_GC_THRESHOLD,
        switch_interval: float | None = DEFAULT_SWITCH_INTERVAL,
    ) -> Cluster:
        """``silos`` in-process silos sharing ``storage`` (a provider or a URL such as
        ``"sqlite:///app.db"``, relative to the working directory, or ``"sqlite:////abs.db"``;
        default ``"memory://"``). A bad path fails here. Start it with ``async with``.
        ``metrics``: record metrics (``cluster.metrics`` reads them); ``metrics_port``: serve
        them for Prometheus on ``http://127.0.0.1:<port>/metrics`` (0: any free port).
        ``sagas``: the saga settings (``SagaSettings``; see docs/sagas.md). ``tracing``:
        ``TracingSettings`` (see docs/observability.md). ``gc_threshold``: the garbage
        collector's young-generation threshold while the silos run (None: leave the process's
        collector alone; see docs/decisions.md). ``switch_interval``: the interpreter's thread
        switch interval while the silos run, in seconds (default 1 ms; None: leave it alone;
        see docs/decisions.md)."""
        if not isinstance(silos, int) or silos < 1:
            raise ConfigurationError(f"silos must be a positive int, got {silos!r}")
        registry = ActorRegistry(actor_types(actors))
        options = backend_options(
            default_timeout,
            default_idle_timeout,
            collection_period,
            max_message_bytes,
            deactivation_timeout,
            transactions,
            max_queued_calls,
            reminders,
            MetricsSettings.chosen(metrics, "local"),
            sagas,
            streams or StreamSettings(),
            tracing,
            gc_threshold,
            switch_interval,
        )
        MetricsSettings.check_port(metrics_port, metrics)
        backend = LocalBackend(
            registry, silos, storage, clock or SystemClock(), options, metrics_port
        )
        return cls(registry, backend)

    @classmethod
    def ray(
        cls,
        actors: Iterable[type[Actor[Any]]],
        *,
        name: str | None = None,
        address: str | None = None,
        runtime_env: dict[str, Any] | None = None,
        silos_per_node: int = 1,
        storage: str | None = None,
        server_storage: str = "sqlite:///raygrain-state.db",
        default_timeout: float = 30.0,
        default_idle_timeout: float = 15 * 60.0,
        collection_period: float = 60.0,
        max_message_bytes: int = 16 * 1024 * 1024,
        deactivation_timeout: float = 30.0,
        failure_detection: FailureDetection | None = None,
        transactions: TransactionSettings | None = None,
        max_queued_calls: int = 10_000,
        log_level: str | None = None,
        transport: str = "direct",
        tls: TLSFiles | None = None,
        reminders: ReminderSettings | None = None,
        metrics: bool | MetricsSettings = True,
        sagas: SagaSettings | None = None,
        streams: StreamSettings | None = None,
        tracing: TracingSettings | None = None,
        gc_threshold: int | None = DEFAULT_GC_THRESHOLD,
        switch_interval: float | None = DEFAULT_SWITCH_INTERVAL,
    ) -> Cluster:
        """A deployment of silos as Ray actors, one per node (``silos_per_node``), stopped on
        ``aclose()``.

        ``name``: the deployment's name (its own Ray namespace; default: a unique one), so that
        programs sharing a Ray never see or stop each other's silos. ``address``: None joins
        ``RAY_ADDRESS`` when set and otherwise starts a local Ray; ``"auto"`` or
        ``"ray://host:10001"`` (needs ``raygrain[client]``) joins one. ``runtime_env``: Ray's,
        for the silos (``working_dir``, ``pip``, ``env_vars``...). ``storage``: None (default)
        puts a storage server on this node in front of ``server_storage`` (default
        ``raygrain-state.db`` in the current directory); a ``postgresql://`` URL makes every
        silo and the controller connect to that database directly (no storage server); a
        ``sqlite:`` URL makes every silo open that file itself (one machine only).
        ``log_level``: the silos' (default: ``RAYGRAIN_LOG_LEVEL``). ``transport``:
        ``"direct"`` (default) sends calls over the silos' own authenticated connections, with
        Ray calls as the fallback; ``"ray"`` sends every message as a Ray actor call. ``tls``:
        certificate files for the direct connections (see docs/ray.md). ``sagas``: the saga
        settings (``SagaSettings``; see docs/sagas.md). ``tracing``: ``TracingSettings``, e.g.
        the OpenTelemetry setup each silo process runs (see docs/observability.md).
        ``gc_threshold``: the garbage collector's young-generation threshold in the silos'
        processes (None: Python's default; see docs/decisions.md). ``switch_interval``: the
        interpreter's thread switch interval in the silos' processes, in seconds (default 1 ms;
        None: leave it alone, Python's 5 ms unless the process changed it)."""
        from raygrain.runtime.ray_host import (
            DirectPlane,
            RayBackend,
            RayLaunch,
            check_transport,
            frame_cap,
            namespace_of,
            unique_deployment_name,
        )

        actors = actor_types(actors)
        registry = ActorRegistry(actors)
        deployment = unique_deployment_name() if name is None else name
        namespace_of(deployment)  # a bad name fails here, first
        options = backend_options(
            default_timeout,
            default_idle_timeout,
            collection_period,
            max_message_bytes,
            deactivation_timeout,
            transactions,
            max_queued_calls,
            reminders,
            MetricsSettings.chosen(metrics, deployment),  # (series apart from other deployments)
            sagas,
            streams or StreamSettings(),
            tracing,
            gc_threshold,
            switch_interval,
        )
        if tls is not None and not isinstance(tls, TLSFiles):
            raise ConfigurationError(f"tls must be a TLSFiles, got {type(tls).__name__}")
        if tls is not None:
            tls.check()
        launch = RayLaunch(
            tuple(actors),
            silos_per_node,
            storage,
            server_storage,
            detection=failure_detection or FailureDetection(),
            name=deployment,
            runtime_env=runtime_env,
            log_level=log_level,
            transport=check_transport(transport),
            plane=DirectPlane(tls=tls, max_frame_bytes=frame_cap(options.calls.max_message_bytes)),
        )
        backend = RayBackend(address, launch, options, runtime_env=runtime_env, transport=transport)
        return cls(registry, backend)

    @classmethod
    def connect(
        cls,
        address: str | None = "auto",
        actors: Iterable[type[Actor[Any]]] = (),
        *,
        name: str = "default",
        default_timeout: float = 30.0,
        max_message_bytes: int = 16 * 1024 * 1024,
        transport: str = "direct",
    ) -> Cluster:
        """A client of the deployment ``name`` already running on Ray (``raygrain up
        --name``; default ``"default"``). It never stops anything. ``actors`` are optional:
        they give typed ``get`` and per-method timeouts. ``transport``: ``"direct"``
        (default; Ray calls when the silos offer no direct plane or cannot be dialled) or
        ``"ray"``."""
        from raygrain.runtime.ray_host import RayBackend, namespace_of

        namespace_of(name)  # a bad name fails here
        registry = ActorRegistry(actors, hosts=False)
        options = backend_options(default_timeout, 900.0, 60.0, max_message_bytes, 30.0)
        client = cls(
            registry, RayBackend(address, None, options, deployment=name, transport=transport)
        )
        client._learns_types = True
        return client

    @property
    def name(self) -> str | None:
        """The deployment's name on Ray (None in local mode)."""
        return getattr(self._backend, "deployment", None)

    async def start(self) -> Cluster:
        if not self._started:
            self._started = True
            self._loop = self._caller.home_loop = asyncio.get_running_loop()
            try:
                await self._backend.start()
            except BaseException:
                # The backend has undone what it started; this cluster is closed, not leaked.
                self.closed = True
                self._caller.close()
                raise
        return self

    async def __aenter__(self) -> Cluster:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __enter__(self) -> NoReturn:
        # A plain 'with' (the async forgotten) met Python's "does not support the context
        # manager protocol", which says nothing of the fix.
        raise InvalidCallError(
            "a Cluster is an async context manager: write 'async with Cluster.local(...) as "
            "cluster:' (or Cluster.ray, Cluster.connect) in an 'async def main()' run by "
            "asyncio.run(main()), and await its actors' methods there"
        )

    def __exit__(self, *exc_info: object) -> None:  # (never reached: __enter__ raises)
        pass

    async def aclose(self) -> None:
        """Deactivate every activation (state is already durable) and stop the silos.

        Calls made from here on are refused (``ClusterClosedError``). In-process, the turns
        running finish first and their calls get their answers; on Ray, calls still waiting
        fail with ``ClusterClosedError`` (whether they ran is unknown). A caller cancelled
        meanwhile (a timeout around the close) does not cut it short: it goes on, and a later
        ``aclose()`` waits for it. From another thread (another event loop): run it on the
        cluster's, ``asyncio.run_coroutine_threadsafe(cluster.aclose(), loop)``."""
        closing = self._closing
        if closing is not None and closing.done():
            return await closing  # (closed: nothing left on any loop; a failed close raises)
        if self._loop is not None and self._loop is not asyncio.get_running_loop():
            # (Its tasks and futures belong to that loop: closing here would stop half of it,
            # and no later aclose could finish.)
            raise InvalidCallError(
                "cluster.aclose() runs on the event loop that started the cluster; from "
                "another thread: asyncio.run_coroutine_threadsafe(cluster.aclose(), loop)"
            )
        if self._closing is None:
            self.closed = True
            # In-process, the silos answer the turns they finish as they close.
            if self.silos:
                self._caller.refuse_calls()
            else:
                self._caller.close()
            self._closing = asyncio.get_running_loop().create_task(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        try:
            await self._backend.aclose()
        finally:
            self._caller.close()  # (in-process: what is still pending; else done already)

    def get(self, actor_type: type[A], key: ActorKey) -> A:
        """A reference to the actor ``(actor_type, key)``. Nothing is created until a call."""
        self._check_running(f"cluster.get({getattr(actor_type, '__qualname__', actor_type)}, ...)")
        try:
            type_name = self._registry.type_name_of(actor_type)
        except UnknownActorTypeError:
            if not (self._learns_types and isinstance(actor_type, type)):
                raise
            try:
                self._registry.add(actor_type)
            except ConfigurationError as exc:  # not an actor class, or a name taken
                raise UnknownActorTypeError(str(exc)) from None
            type_name = self._registry.type_name_of(actor_type)
        return cast(A, ActorRef(ActorId(type_name, key), self._caller))

    @property
    def streams(self) -> ClusterStreams:
        """Streams from this client: ``cluster.streams.get(ns, key).publish(x)``, dead
        letters, observers (see docs/streams.md)."""
        self._check_running("cluster.streams")
        if self._streams is None:
            options = getattr(self._backend, "options", None)
            settings = options.setting(StreamSettings, None) if options is not None else None
            self._streams = ClusterStreams(self._caller, settings)
        return self._streams

    def ref(self, type_name: str, key: ActorKey) -> ActorRef:
        """An untyped reference by type name (for clients that do not import the classes)."""
        self._check_running(f"cluster.ref({type_name!r}, ...)")
        return ActorRef(ActorId(type_name, key), self._caller)

    def _check_running(self, what: str) -> None:
        if self.closed:
            raise ClusterClosedError(f"{what}: the cluster is closed")
        if not self._started:
            raise ClusterNotStartedError(
                f"{what}: the cluster is not started; use it as "
                "'async with Cluster.local(...) as cluster:' (or 'await cluster.start()' first)"
            )

    @property
    def silos(self) -> list[Silo]:
        """The in-process silos (local mode only; empty on Ray)."""
        return list(getattr(self._backend, "silos", []))

    @property
    def metrics(self) -> PrometheusExporter | None:
        """The in-process cluster's metrics (``value(name, **labels)``, ``text()``, ``port``);
        None on Ray (see Ray's metrics endpoint) or with metrics off."""
        return getattr(self._backend, "metrics", None)

    @property
    def storage(self) -> StorageProvider | None:
        return getattr(self._backend, "storage", None)

    async def collect_idle(self) -> int:
        """Run one idle collection on every in-process silo now; returns how many went."""
        return sum([await silo.collect_idle() for silo in self.silos])

    async def stats(self) -> list[dict[str, Any]]:
        """Per-silo figures: activations, calls received, node and view (on Ray)."""
        return await self._backend.stats()

    def __del__(self) -> None:
        if getattr(self, "_started", False) and not getattr(self, "closed", True):
            warnings.warn(
                "raygrain Cluster was started and never closed: use 'async with' or aclose()",
                ResourceWarning,
                stacklevel=1,
            )
