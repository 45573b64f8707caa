"""The Ray actors of a deployment: the controller, the storage server and the silos.

Each wraps a host-agnostic body (``ControllerImpl``, ``StorageServerImpl``, ``SiloHostImpl``)
and adds what only Ray knows: where actors live (node affinity), how a silo is found by name in
its deployment's namespace, probed and killed, and Ray's node list, which the controller's
``NodeFollower`` keeps silos on. ``_deploy`` starts them.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psutil  # type: ignore[import-untyped]
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raygrain.actors import Actor
from raygrain.runtime.kernel import (
    SiloOptions,
    SiloStatus,
    configure_logging,
    get_logger,
    view_from_wire,
)
from raygrain.runtime.membership import (
    ControllerImpl,
    FailureDetection,
    SiloDied,
    membership_record,
)
from raygrain.runtime.ray_host._direct import DirectPlane
from raygrain.runtime.ray_host._host import SiloHostImpl
from raygrain.runtime.ray_host._nodes import NodeFollower
from raygrain.runtime.ray_host._storage_server import RemoteStorage, StorageServerImpl
from raygrain.storage import open_storage

if TYPE_CHECKING:
    from raygrain.runtime.ray_host._launch import RayLaunch

__all__ = [
    "CONTROLLER_NAME",
    "SILO_PREFIX",
    "STANDBY_NAME",
    "STORAGE_NAME",
    "ControllerActor",
    "SiloActor",
    "StorageServerActor",
    "create_silo",
    "lookup",
    "resolver",
]

CONTROLLER_NAME = "raygrain-controller"
STANDBY_NAME = "raygrain-controller-standby"
STORAGE_NAME = "raygrain-storage"
SILO_PREFIX = "raygrain-silo-"


async def _alive_node_ids() -> list[str]:
    nodes = await asyncio.to_thread(ray.nodes)
    return [str(n["NodeID"]) for n in nodes if n.get("Alive")]


def _remote_storage(namespace: str) -> RemoteStorage:
    # One handle for the server's whole life: Ray restarts it in place when its process dies
    # (max_restarts), and the handle reaches the new incarnation.
    return RemoteStorage(ray.get_actor(STORAGE_NAME, namespace=namespace))


@ray.remote(num_cpus=0, max_concurrency=10_000, max_restarts=-1)  # type: ignore[call-overload]
class ControllerActor(ControllerImpl):
    def __init__(
        self,
        namespace: str,
        detection: FailureDetection,
        storage: str | None,
        launch: RayLaunch | None = None,
        options: SiloOptions | None = None,
        plane: DirectPlane | None = None,
        standby: bool = False,
    ) -> None:
        # The deployment's direct plane (None: Ray calls only), kept here for silos and clients
        # to ask for through Ray; a restarted controller gets the same from Ray.
        self.plane = plane
        # The view's truth lives in the state store; Ray restarts a crashed controller, which
        # then continues from the stored view.
        store: Any = _remote_storage(namespace) if storage is None else open_storage(storage)
        super().__init__(detection, store, membership_record(namespace))
        self.namespace = namespace
        self._resolve = resolver(namespace)
        self._launch = launch
        self._options = options
        self.follower: NodeFollower | None = None
        # A standby leads only while the controller does not answer (see _guard).
        self.standby = standby
        self.leading = not standby
        self._guarding: asyncio.Task[None] | None = None
        if launch is not None and options is not None and not standby:
            self.follower = NodeFollower(
                launch.silos_per_node,
                _alive_node_ids,
                self.live_silos_on,
                self._start_silo,
                joining_on=self.joining_silos_on,
            )

    def live_silos_on(self, node_id: str) -> int:
        prefix = _silo_prefix(node_id)
        return sum(
            1
            for name, status in self.view.silos
            if name.startswith(prefix) and status is not SiloStatus.DEAD
        )

    async def joining_silos_on(self, node_id: str) -> list[str]:
        """The deployment's silos that Ray has on ``node_id`` but the view does not hold yet:
        being started (by hand, or by this controller's previous incarnation)."""
        prefix = _silo_prefix(node_id)
        in_view = {name for name, _ in self.view.silos}
        named = await asyncio.to_thread(ray.util.list_named_actors, all_namespaces=True)
        return [
            entry["name"]
            for entry in named
            if entry.get("namespace") == self.namespace
            and entry["name"].startswith(prefix)
            and entry["name"] not in in_view
        ]

    async def _start_silo(self, node_id: str, index: int) -> str:
        assert self._launch is not None and self._options is not None
        # Detached: a silo created by the controller would otherwise die with it (Ray's
        # ownership), and a restarted controller must find its silos serving. Silos stop
        # themselves once their controller is gone for good (see SiloActor).
        name, silo = create_silo(node_id, index, self._launch, self._options, detached=True)
        _handles[(self.namespace, name)] = silo
        try:
            await silo.start.remote()
        except BaseException:
            # (Its start failed or timed out: a silo left half-started would count as joining
            # its node, and live on as a detached process serving nothing.)
            _handles.pop((self.namespace, name), None)
            ray.kill(silo, no_restart=True)
            raise
        return name

    async def _load(self) -> None:
        await super()._load()
        # A controller that Ray restarted is first called by its silos' long polls, never by
        # start_silos: it takes up following the node list here.
        if self.follower is not None:
            self.follower.follow()
        if self.standby and self._guarding is None:
            self._guarding = asyncio.ensure_future(self._guard())

    async def _guard(self) -> None:
        """(The standby) follow the controller's view, probing its silos as the controller
        does; lead when the controller is down.

        Both run on Ray's head node, in processes of their own: when the controller's process
        dies, Ray restarts it in place, which takes seconds (a new worker process); meanwhile
        the standby declares dead silos and publishes the views, through the same stored record
        (compare-and-swap), and silos and clients follow it. It has probed the silos all along,
        so a silo that died with the controller is declared dead as soon as it would have been.
        Once the controller answers again, the standby stops and the controller reads the
        stored view again.
        """
        controller = ray.get_actor(CONTROLLER_NAME, namespace=self.namespace)
        detection = self.detection
        missed = 0
        process: psutil.Process | None = None  # the controller's, once known (same node)
        while True:
            try:
                blob = await _answer_unless_gone(
                    controller.get_view.remote(), process, detection.probe_timeout
                )
                missed = 0
                if self.leading:
                    await self.step_down()
                    # Bounded, as every call to the controller here: it may stall again (a
                    # stopped process answers nothing and does not die), and a guard waiting
                    # on it would never lead again. (Ray delivers the call all the same: only
                    # the waiting stops; a miss counts, as a probe's would.)
                    await _answer_unless_gone(
                        controller.resume.remote(self.missed_probes()),
                        process,
                        detection.probe_timeout * detection.missed_probes,
                    )
                    get_logger().warning("controller_back_standby_stepped_down")
                    process = None  # Ray restarted it: another process
                else:
                    self.follow(view_from_wire(blob))
                if process is None:
                    process = await self._process_of(controller, detection.probe_timeout)
            except Exception as exc:
                if isinstance(exc, _ControllerGone):
                    process = None
                # Ray's word that the process died (it is restarting) counts at once; a probe
                # that times out counts as a miss.
                missed = detection.missed_probes if _died(exc) else missed + 1
                if missed >= detection.missed_probes and not self.leading:
                    get_logger().warning("controller_unreachable", error=repr(exc))
                    try:
                        await self.take_over()
                    except Exception as failure:  # the store away: try again on the next miss
                        get_logger().warning("standby_take_over_failed", error=repr(failure))
                        self.leading = False
            await asyncio.sleep(detection.probe_period)

    async def _process_of(self, controller: Any, timeout: float) -> psutil.Process | None:
        """The controller's process, if it runs on this node (it does: both are pinned to the
        head node), so that its death is seen at once: a call to a killed actor that Ray
        restarts waits for the restart rather than fail, and Ray's own notice takes seconds."""
        try:
            node, pid = await asyncio.wait_for(
                asyncio.gather(controller.node_id.remote(), controller.pid.remote()), timeout
            )
            if node != ray.get_runtime_context().get_node_id():
                return None
            return psutil.Process(pid)
        except Exception:
            return None  # asked again after the next answer

    async def guard(self) -> bool:
        """(The standby) make sure it watches the controller; True if it leads now."""
        async with self._lock:
            await self._load()
        return self.leading

    async def start_silos(self) -> tuple[list[str], list[str]]:
        """Start the silos every live node lacks, then keep following Ray's node list; the
        names started, and why others failed to (one line each)."""
        async with self._lock:
            await self._load()
        if self.follower is None:
            return [], []
        await self._forget_gone_silos()
        self.follower.failures = []
        names = await self.follower.fill()
        failures = list(self.follower.failures)
        self.follower.follow()
        return names, failures

    async def _forget_gone_silos(self) -> None:
        """Declare dead, before filling the nodes, the silos the stored view holds that Ray
        no longer has. A deployment launched again under the name of one whose program was
        killed finds that one's silos in the view (they stopped themselves, unrecorded):
        counted as live, they left every node "full", and the launch started no silo."""
        listed = [name for name, status in self.view.silos if status is not SiloStatus.DEAD]
        if not listed:
            return
        named = await asyncio.to_thread(ray.util.list_named_actors, all_namespaces=True)
        present = {e["name"] for e in named if e.get("namespace") == self.namespace}
        for name in listed:
            if name not in present:
                await self._try_to_declare_dead(name, "gone from Ray when the deployment started")

    async def halt(self) -> None:
        """The deployment is going down: start no more silos."""
        if self.follower is not None:
            self.follower.halt()

    async def probe_silo(self, name: str) -> None:
        try:
            await self._resolve(name).probe.remote()
        except ray.exceptions.ActorUnavailableError:
            raise  # maybe only slow or restarting: a missed probe
        except (ray.exceptions.RayActorError, ValueError) as exc:
            raise SiloDied(type(exc).__name__) from None

    def direct_plane(self) -> DirectPlane | None:
        return self.plane

    def node_id(self) -> str:
        """The Ray node this controller runs on."""
        return str(ray.get_runtime_context().get_node_id())

    def pid(self) -> int:
        return os.getpid()

    def kill_silo(self, name: str) -> None:
        try:
            ray.kill(self._resolve(name))
        except Exception:
            pass  # already gone


@ray.remote(num_cpus=0, max_concurrency=10_000, max_restarts=-1)  # type: ignore[call-overload]
class StorageServerActor(StorageServerImpl):
    """Restarted in place by Ray when its process dies (it is pinned to its file's node)."""

    def pid(self) -> int:
        return os.getpid()


@ray.remote(  # type: ignore[call-overload]
    num_cpus=0, max_concurrency=100_000, concurrency_groups={"probe": 1}
)
class SiloActor:
    """A silo in a Ray actor. Storage is a spec string or ``None`` (the storage server)."""

    def __init__(
        self,
        namespace: str,
        name: str,
        node_id: str,
        actor_types: list[type[Actor[Any]]],
        storage: str | None,
        options: SiloOptions,
    ) -> None:
        configure_logging()  # RAYGRAIN_LOG_LEVEL, as the deployment's runtime_env sets it
        controller = ray.get_actor(CONTROLLER_NAME, namespace=namespace)
        provider: Any = _remote_storage(namespace) if storage is None else storage
        self.namespace = namespace
        self.probe_delay = 0.0
        self.host = SiloHostImpl(
            name,
            node_id,
            actor_types,
            provider,
            options,
            resolver(namespace),
            controller,
            ray.util.get_node_ip_address(),  # type: ignore[no-untyped-call]
            controller_gone=self._controller_gone,
            standby=lookup(STANDBY_NAME, namespace),
        )

    def _controller_gone(self, error: BaseException) -> bool:
        """True (and this silo's process ends soon) when the controller is gone for good.

        Its owner ended (a ``Cluster.ray`` program that exited) or its deployment was taken
        down: a silo without a controller would serve on unsupervised. A controller that Ray
        is restarting still has its name, so only a failed lookup counts, of the controller
        and of its standby (which leads while the controller is away).
        """
        if not isinstance(error, ray.exceptions.RayActorError):
            return False
        for name in (CONTROLLER_NAME, STANDBY_NAME):
            if lookup(name, self.namespace) is not None:
                return False
        get_logger().warning("controller_gone_stopping", silo=self.host.name)
        asyncio.get_running_loop().call_later(1.0, os._exit, 0)
        return True

    async def start(self) -> bytes:
        return await self.host.start()

    async def receive_batch(self, blob: bytes, sender: str) -> bytes:
        return await self.host.receive_batch(blob, sender)

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


def _silo_prefix(node_id: str) -> str:
    return f"{SILO_PREFIX}{node_id[:12]}-"


def _died(error: BaseException) -> bool:
    return isinstance(error, (ray.exceptions.RayActorError, _ControllerGone))


class _ControllerGone(Exception):
    """The controller's process is no longer running (seen on its node)."""


def _running(process: psutil.Process) -> bool:
    try:  # (is_running also tells a reused pid from the process it was)
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


async def _answer_unless_gone(
    call: Any, process: psutil.Process | None, timeout: float, every: float = 0.05
) -> Any:
    """``call``'s answer within ``timeout`` seconds; ``_ControllerGone`` as soon as
    ``process`` (if known) stops running, ``TimeoutError`` after ``timeout``."""
    answer = asyncio.ensure_future(call)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise asyncio.TimeoutError()
            done, _ = await asyncio.wait({answer}, timeout=min(every, left))
            if done:
                return answer.result()
            if process is not None and not _running(process):
                raise _ControllerGone(f"process {process.pid} is gone")
    finally:
        if not answer.done():
            answer.cancel()


_handles: dict[tuple[str, str], Any] = {}  # (namespace, actor name) -> handle


def resolver(namespace: str) -> Callable[[str], Any]:
    """Silo name -> Ray actor handle, in the deployment's namespace (cached)."""

    def resolve(name: str) -> Any:
        handle = _handles.get((namespace, name))
        if handle is None:
            handle = _handles[(namespace, name)] = ray.get_actor(name, namespace=namespace)
        return handle

    return resolve


def create_silo(
    node_id: str,
    index: int,
    launch: RayLaunch,
    options: SiloOptions,
    detached: bool | None = None,
) -> tuple[str, Any]:
    """Create (not yet start) silo number ``index`` of ``launch``'s deployment on ``node_id``."""
    # A fresh suffix per incarnation: a name declared dead in the (stored) view never returns.
    name = f"{_silo_prefix(node_id)}{index}-{uuid.uuid4().hex[:6]}"
    silo = SiloActor.options(  # type: ignore[attr-defined]
        name=name,
        namespace=launch.namespace,
        lifetime="detached" if (launch.detached if detached is None else detached) else None,
        runtime_env=launch.actor_runtime_env(),
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
    ).remote(launch.namespace, name, node_id, list(launch.actor_types), launch.storage, options)
    return name, silo


def lookup(name: str, namespace: str) -> Any:
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None
