"""Launching and joining raygrain on Ray: named actors in the ``raygrain`` namespace.

``RayBackend`` is what ``Cluster.ray`` and ``Cluster.connect`` run on: it starts (or joins) Ray,
finds or creates the controller and the storage server on the driver's node, starts one silo
per node (pinned with a node-affinity strategy), and gives the client a ``RayTransport`` and
the controller's membership view. The ``raygrain`` CLI uses the same functions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raygrain.actors import Actor, ConfigurationError
from raygrain.runtime._capabilities import client_filters
from raygrain.runtime.kernel import (
    ActorRegistry,
    Caller,
    Membership,
    SiloOptions,
    SiloStatus,
    get_logger,
    view_from_wire,
)
from raygrain.runtime.membership import ControllerImpl, FailureDetection, SiloDied
from raygrain.runtime.ray_host._direct import (
    DirectPlane,
    Locator,
    PlaneSwitch,
    check_transport,
)
from raygrain.runtime.ray_host._host import SiloHostImpl
from raygrain.runtime.ray_host._storage_server import RemoteStorage, StorageServerImpl
from raygrain.runtime.ray_host._transport import CLIENT_PREFIX, RayTransport
from raygrain.runtime.wire import WireTransport
from raygrain.storage import open_storage

__all__ = ["NAMESPACE", "RayBackend", "RayLaunch", "find_silos"]

NAMESPACE = "raygrain"
CONTROLLER_NAME = "raygrain-controller"
STORAGE_NAME = "raygrain-storage"
SILO_PREFIX = "raygrain-silo-"
DEFAULT_STORAGE = "sqlite://raygrain-state.db"  # relative: made absolute where launched


@ray.remote(num_cpus=0, max_concurrency=10_000, max_restarts=-1)  # type: ignore[call-overload]
class ControllerActor(ControllerImpl):
    def __init__(
        self, detection: FailureDetection, storage: str | None, plane: DirectPlane | None = None
    ) -> None:
        # The deployment's direct plane (None: Ray calls only), kept here for silos and clients
        # to ask for through Ray; a restarted controller gets the same from Ray.
        self.plane = plane
        # The view's truth lives in the state store; Ray restarts a crashed controller, which
        # then continues from the stored view.
        store: Any = (
            RemoteStorage(ray.get_actor(STORAGE_NAME, namespace=NAMESPACE))
            if storage is None
            else open_storage(storage)
        )
        super().__init__(detection, store)

    async def probe_silo(self, name: str) -> None:
        try:
            await _resolve(name).probe.remote()
        except ray.exceptions.ActorUnavailableError:
            raise  # maybe only slow or restarting: a missed probe
        except (ray.exceptions.RayActorError, ValueError) as exc:
            raise SiloDied(type(exc).__name__) from None

    def direct_plane(self) -> DirectPlane | None:
        return self.plane

    def node_id(self) -> str:
        """The Ray node this controller runs on (restarted, it may be another one)."""
        return str(ray.get_runtime_context().get_node_id())

    def kill_silo(self, name: str) -> None:
        try:
            ray.kill(_resolve(name))
        except Exception:
            pass  # already gone


@ray.remote(num_cpus=0, max_concurrency=10_000)  # type: ignore[call-overload]
class StorageServerActor(StorageServerImpl):
    pass


@ray.remote(  # type: ignore[call-overload]
    num_cpus=0, max_concurrency=100_000, concurrency_groups={"probe": 1}
)
class SiloActor:
    """A silo in a Ray actor. Storage is a spec string or ``None`` (the storage server)."""

    def __init__(
        self,
        name: str,
        node_id: str,
        actor_types: list[type[Actor[Any]]],
        storage: str | None,
        options: SiloOptions,
    ) -> None:
        controller = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
        provider: Any = (
            RemoteStorage(ray.get_actor(STORAGE_NAME, namespace=NAMESPACE))
            if storage is None
            else storage
        )
        self.probe_delay = 0.0
        self.host = SiloHostImpl(
            name,
            node_id,
            actor_types,
            provider,
            options,
            _resolve,
            controller,
            ray.util.get_node_ip_address(),  # type: ignore[no-untyped-call]
        )

    async def start(self) -> bytes:
        return await self.host.start()

    async def receive_batch(self, blob: bytes) -> bytes:
        return await self.host.receive_batch(blob)

    async def poll(self, client: str) -> bytes:
        return await self.host.poll(client)

    def wire_address(self) -> tuple[str, int] | None:
        """Where this silo listens for direct connections (None: it does not)."""
        return self.host.direct_address

    async def drop_connections(self) -> int:
        """Test hook: close every direct connection of this silo at once (a network fault)."""
        return self.host.wire.drop_connections() if self.host.wire is not None else 0

    async def forget_client(self, client: str) -> None:
        await self.host.forget_client(client)

    async def stats(self) -> dict[str, Any]:
        return await self.host.stats()

    async def leave(self) -> None:
        await self.host.leave()

    async def stop(self) -> None:
        await self.host.stop()

    @ray.method(concurrency_group="probe")
    async def probe(self) -> str:
        # Answered on the probe group's own thread and loop: a CPU-bound turn on the main
        # loop does not delay it, so a busy silo is not taken for a dead one.
        if self.probe_delay:
            await asyncio.sleep(self.probe_delay)
        return self.host.name

    @ray.method(concurrency_group="probe")
    async def delay_probes(self, seconds: float) -> None:
        """Test hook: answer probes late, to stage a false suspicion of a live silo."""
        self.probe_delay = seconds


_handles: dict[str, Any] = {}


def _resolve(name: str) -> Any:
    handle = _handles.get(name)
    if handle is None:
        handle = _handles[name] = ray.get_actor(name, namespace=NAMESPACE)
    return handle


def find_silos() -> list[str]:
    """Names of the raygrain silos alive in the connected Ray cluster."""
    names = ray.util.list_named_actors(all_namespaces=True)
    return sorted(
        entry["name"]
        for entry in names
        if entry.get("namespace") == NAMESPACE and entry["name"].startswith(SILO_PREFIX)
    )


def absolute_storage_url(spec: str) -> str:
    """Make a relative ``sqlite://`` path absolute against this process's directory: Ray
    workers run elsewhere, and would otherwise each resolve it against their own."""
    if spec.startswith("sqlite://") and not spec.startswith("sqlite:///"):
        return "sqlite:///" + os.path.abspath(spec[len("sqlite://") :])
    return spec


@dataclass(frozen=True)
class RayLaunch:
    """What to start on Ray: the actor types, silos per node, storage, and lifetime."""

    actor_types: tuple[type[Actor[Any]], ...]
    silos_per_node: int = 1
    storage: str | None = None  # None: the storage server in front of DEFAULT_STORAGE
    server_storage: str = DEFAULT_STORAGE
    detached: bool = False
    detection: FailureDetection = field(default_factory=FailureDetection)
    transport: str = "direct"  # "ray": silos listen nowhere, Ray calls carry every message
    plane: DirectPlane = field(default_factory=DirectPlane)  # a fresh secret per launch

    def __post_init__(self) -> None:
        check_transport(self.transport)
        object.__setattr__(self, "server_storage", absolute_storage_url(self.server_storage))
        if self.storage is not None:
            object.__setattr__(self, "storage", absolute_storage_url(self.storage))


def ensure_ray(address: str | None, local_code: bool | None = None) -> bool:
    """Connect to Ray (start a local one when ``address`` is None); True if we started it.

    ``local_code`` (default: when starting a local Ray) lets workers import what this process
    imports, by handing them its ``sys.path``: that is how actor classes from the user's own
    modules reach the silos on one machine. On a remote cluster, ship code with Ray's
    ``runtime_env`` (``working_dir`` or ``py_modules``) instead.
    """
    if ray.is_initialized():
        return False
    if local_code is None:
        local_code = address is None
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}}
    ray.init(
        # "local" starts a fresh Ray even when another one runs on this machine.
        address=address or "local",
        namespace=NAMESPACE,
        runtime_env=env if local_code else None,
        logging_level=logging.WARNING,
        log_to_driver=True,
    )
    return address is None


async def launch(launch: RayLaunch, options: SiloOptions) -> dict[str, Any]:
    """Start the controller, the storage server and the silos; returns their handles by name.

    Keep the handles: Ray destroys an actor that is not detached once no handle refers to it.
    """
    if launch.silos_per_node < 1:
        raise ConfigurationError("silos_per_node must be >= 1")
    lifetime = "detached" if launch.detached else None
    here = ray.get_runtime_context().get_node_id()
    # Soft for the controller: Ray restarts it elsewhere if this node dies (it may also place it
    # elsewhere to begin with). Hard for the storage server, which is not restarted: it stays
    # with its file, on this node, and the node is the one place it can be lost with.
    head = NodeAffinitySchedulingStrategy(here, soft=True)
    handles: dict[str, Any] = {}
    if launch.storage is None:
        server = StorageServerActor.options(  # type: ignore[attr-defined]
            name=STORAGE_NAME,
            namespace=NAMESPACE,
            get_if_exists=True,
            lifetime=lifetime,
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
        ).remote(launch.server_storage)
        await server.execute.remote(b"\x90")  # an empty batch: wait until it is up
        handles[STORAGE_NAME] = server
    controller = ControllerActor.options(  # type: ignore[attr-defined]
        name=CONTROLLER_NAME,
        namespace=NAMESPACE,
        get_if_exists=True,
        lifetime=lifetime,
        scheduling_strategy=head,
    ).remote(
        launch.detection,
        launch.storage,
        launch.plane if launch.transport == "direct" else None,
    )
    await controller.get_view.remote()
    handles[CONTROLLER_NAME] = controller
    names, starts = [], []
    for node in ray.nodes():  # type: ignore[no-untyped-call]
        if not node.get("Alive"):
            continue
        for index in range(launch.silos_per_node):
            name, silo = create_silo(node["NodeID"], index, launch, options)
            names.append(name)
            handles[name] = silo
            starts.append(silo.start.remote())
    await asyncio.gather(*starts)
    get_logger().info("silos_started", silos=names)
    return handles


def create_silo(
    node_id: str, index: int, launch: RayLaunch, options: SiloOptions
) -> tuple[str, Any]:
    """Create (not yet start) silo number ``index`` pinned to the node ``node_id``."""
    # A fresh suffix per incarnation: a name declared dead in the (stored) view never returns.
    name = f"{SILO_PREFIX}{node_id[:12]}-{index}-{uuid.uuid4().hex[:6]}"
    silo = SiloActor.options(  # type: ignore[attr-defined]
        name=name,
        namespace=NAMESPACE,
        lifetime="detached" if launch.detached else None,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
    ).remote(name, node_id, list(launch.actor_types), launch.storage, options)
    return name, silo


class RayBackend:
    """The client side of a Ray-hosted cluster, and the silos it launched (if any)."""

    def __init__(
        self,
        address: str | None,
        launch: RayLaunch | None,
        options: SiloOptions,
        transport: str = "direct",
    ) -> None:
        self.address = address
        self.launch = launch
        self.options = options
        self.transport_choice = check_transport(transport)
        self.membership = Membership()
        self.client_address = f"{CLIENT_PREFIX}{uuid.uuid4().hex[:12]}"
        self.ray_transport = RayTransport(self.client_address, _resolve)
        self.wire: WireTransport | None = None
        self.transport = PlaneSwitch(self.ray_transport)
        self.handles: dict[str, Any] = {}
        self._started_ray = False
        self._follower: asyncio.Task[None] | None = None
        self._controller: Any = None
        self.caller: Caller | None = None

    def make_caller(self, registry: ActorRegistry) -> Caller:
        caller = Caller(
            self.client_address,
            self.transport,
            self.membership,
            registry,
            self.options.calls,
            filters=client_filters(),
        )
        self.ray_transport.bind(caller)
        self.caller = caller
        return caller

    async def start(self) -> None:
        self._started_ray = ensure_ray(self.address)
        if self.launch is not None:
            self.handles = await launch(self.launch, self.options)
            _handles.update(self.handles)
        try:
            self._controller = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
        except ValueError:
            raise ConfigurationError(
                f"no raygrain cluster on Ray at {self.address!r}: start one with "
                "'raygrain up --address ...' or Cluster.ray(...)"
            ) from None
        self._apply_view(await self._controller.get_view.remote())
        if self.transport_choice == "direct":
            await self._use_direct_plane()
        self._follower = asyncio.ensure_future(self._follow_view())

    async def _use_direct_plane(self) -> None:
        """Learn the deployment's direct plane from the controller (through Ray: the same trust
        boundary as Ray) and switch to it; a deployment launched with transport="ray" has
        none, and Ray carries on."""
        plane = await self._controller.direct_plane.remote()
        if plane is None:
            get_logger().warning("direct_plane_unavailable_using_ray")
            return
        self.wire = WireTransport(
            self.client_address,
            plane.options(),
            Locator(_resolve),
            fallback=self.ray_transport,
        )
        if self.caller is not None:
            self.wire.bind(self.caller)
        self.transport.use(self.wire)
        for name in self.membership.view.active():
            self.wire.connect(name)

    def _apply_view(self, blob: bytes) -> None:
        dead_before = set(self.membership.view.dead())
        if self.membership.update(view_from_wire(blob)):
            for name in self.membership.view.active():
                # Any silo may answer a call forwarded while in flight: be reachable from all.
                if self.wire is not None:
                    self.wire.connect(name)
                else:
                    self.ray_transport.ensure_polling(name)
            view = self.membership.view
            for dead in set(view.dead()) - dead_before:
                if self.caller is not None:
                    self.caller.fail_calls_to(dead)
            if self.wire is not None:  # no redialling silos that died or left
                self.wire.retain(n for n, s in view.silos if s is not SiloStatus.DEAD)

    async def _follow_view(self) -> None:
        while True:
            try:
                blob = await self._controller.wait_view.remote(self.membership.view.version, 10.0)
                self._apply_view(blob)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                get_logger().warning("client_view_follow_failed", error=repr(exc))
                await asyncio.sleep(0.5)

    async def stats(self) -> list[dict[str, Any]]:
        """Figures of every live silo in the view (dead ones are listed in the view only)."""
        names = self.membership.view.active()
        return list(await asyncio.gather(*(_resolve(n).stats.remote() for n in names)))

    async def aclose(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
        for name in {n for n, _ in self.membership.view.silos}:
            try:
                _resolve(name).forget_client.remote(self.client_address)
            except Exception:
                pass
        if self.wire is not None:
            await self.wire.aclose()
        await self.ray_transport.aclose()
        if self.launch is not None and not self.launch.detached:
            await stop_everything()
        self.handles.clear()
        if self._started_ray:
            _handles.clear()
            ray.shutdown()


async def stop_everything() -> None:
    """Stop every silo (their state is already durable), then the storage server and controller."""
    names = find_silos()
    silos = [_resolve(name) for name in names]
    try:
        controller = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
        await asyncio.gather(*(controller.remove.remote(n) for n in names))
    except ValueError:
        pass  # no controller: nothing to tidy in the view
    await asyncio.gather(*(s.stop.remote() for s in silos), return_exceptions=True)
    for handle in silos:
        ray.kill(handle)
    for name in (STORAGE_NAME, CONTROLLER_NAME):
        try:
            handle = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            continue
        if name == STORAGE_NAME:
            try:
                await handle.aclose.remote()
            except Exception:
                pass
        ray.kill(handle)
    _handles.clear()
