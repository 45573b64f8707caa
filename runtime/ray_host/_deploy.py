"""Starting and stopping a deployment on Ray, and finding the deployments that run.

Every deployment has a name; its controller, storage server and silos are named actors in the
Ray namespace ``raygrain-<name>``, so two deployments on one Ray cannot see each other, and
stopping one touches only its own actors. ``launch`` creates the storage server on the
driver's node and the controller on Ray's head node, which starts the silos and keeps
``silos_per_node`` of them on every live node (``NodeFollower``); the first actor it creates
claims the name, and a launch that fails or is interrupted stops what it started.
``stop_everything`` takes a deployment down. ``Cluster.ray`` (through ``RayBackend``) and the
``raygrain`` CLI use the same functions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import uuid
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raygrain.actors import ConfigurationError, RaygrainError
from raygrain.runtime.kernel import SiloOptions, get_logger
from raygrain.runtime.metrics import MetricsSettings
from raygrain.runtime.ray_host._actors import (
    CONTROLLER_NAME,
    SILO_PREFIX,
    STANDBY_NAME,
    STORAGE_NAME,
    ControllerActor,
    StorageServerActor,
    _handles,
    lookup,
    resolver,
)
from raygrain.runtime.ray_host._launch import (
    DEFAULT_DEPLOYMENT,
    NAMESPACE_PREFIX,
    RayLaunch,
    namespace_of,
)

__all__ = [
    "find_silos",
    "launch",
    "list_deployments",
    "stop_everything",
    "unique_deployment_name",
]

_STOP_TIMEOUT = 30.0  # the longest a shutdown waits for one silo to close before killing it


def unique_deployment_name() -> str:
    """The name of a ``Cluster.ray()`` deployment that was given none: its own, always."""
    return f"cluster-{uuid.uuid4().hex[:10]}"


# Every Ray head node carries this resource (Ray's documented way to schedule on the head).
_ON_HEAD = {"node:__internal_head__": 0.001}


def _named_actors(namespace: str) -> list[str]:
    return [
        entry["name"]
        for entry in ray.util.list_named_actors(all_namespaces=True)
        if entry.get("namespace") == namespace
    ]


def find_silos(deployment: str = DEFAULT_DEPLOYMENT) -> list[str]:
    """Names of the deployment's silos alive in the connected Ray cluster."""
    return sorted(n for n in _named_actors(namespace_of(deployment)) if n.startswith(SILO_PREFIX))


def list_deployments() -> list[str]:
    """Names of the raygrain deployments on the connected Ray cluster: every namespace that
    holds an actor of one (with a controller, or a launch under way or killed half-way, which
    ``stop_everything`` takes down all the same)."""
    ours = (CONTROLLER_NAME, STANDBY_NAME, STORAGE_NAME)
    return sorted(
        {
            entry["namespace"][len(NAMESPACE_PREFIX) :]
            for entry in ray.util.list_named_actors(all_namespaces=True)
            if entry.get("namespace", "").startswith(NAMESPACE_PREFIX)
            and (entry["name"] in ours or entry["name"].startswith(SILO_PREFIX))
        }
    )


async def launch(launch: RayLaunch, options: SiloOptions) -> dict[str, Any]:
    """Start the deployment's storage server, controller and silos; their handles by name.

    Keep the handles: Ray destroys an actor that is not detached once no handle refers to it.
    A name in use (its deployment running, or being launched) is refused with
    ``ConfigurationError``. A launch that fails or is cancelled (Ctrl-C) stops what it started:
    no half-made deployment is left holding the name.
    """
    handles: dict[str, Any] = {}
    try:
        await _launch(launch, _labelled(options, launch.name), handles)
    except BaseException as exc:
        if handles:  # (nothing of ours when the name was taken: leave it alone)
            await _undo(launch.name, handles)
        failure = _launch_failure(launch, exc)
        if failure is exc:
            raise
        raise failure from None
    return handles


async def _launch(launch: RayLaunch, options: SiloOptions, handles: dict[str, Any]) -> None:
    namespace = launch.namespace
    lifetime = "detached" if launch.detached else None
    runtime_env = launch.actor_runtime_env()
    here = ray.get_runtime_context().get_node_id()
    if launch.storage is None:
        # Hard affinity: the server stays with its file, on this node; Ray restarts it there
        # when its process dies, and the node is the one place it can be lost with.
        server = handles[STORAGE_NAME] = _claim(
            launch,
            STORAGE_NAME,
            StorageServerActor.options(  # type: ignore[attr-defined]
                name=STORAGE_NAME,
                namespace=namespace,
                lifetime=lifetime,
                runtime_env=runtime_env,
                scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
            ),
            launch.server_storage,
        )
        await server.execute.remote(b"\x90")  # an empty batch: wait until it is up
    # On the head node, always: the controller then dies only with Ray's own GCS, never with a
    # worker node (soft affinity to the launching node let Ray place it on a worker, whose
    # death cost 16 s: Ray's node-death timeout plus a restart, with that node's silos
    # undetected meanwhile). By the head's resource rather than its node id, so that with GCS
    # fault tolerance a restarted controller follows a restarted head. The standby beside it,
    # in a process of its own, leads while Ray restarts a controller whose process died.
    controller = handles[CONTROLLER_NAME] = _controller(launch, options, standby=False)
    standby = handles[STANDBY_NAME] = _controller(launch, None, standby=True)
    await standby.guard.remote()
    names, failures = await controller.start_silos.remote()
    if not names:
        raise ConfigurationError(
            f"deployment {launch.name!r}: no silo started"
            + (f" ({failures[-1]})" if failures else "")
        )
    for failure in failures:  # some nodes have silos, others not (yet: the controller retries)
        get_logger().warning("silo_start_failed", deployment=launch.name, error=failure)
    resolve = resolver(namespace)
    handles.update({name: resolve(name) for name in names})
    get_logger().info("silos_started", deployment=launch.name, silos=names)


def _labelled(options: SiloOptions, deployment: str) -> SiloOptions:
    """``options`` whose metrics carry the deployment's name as their ``deployment`` label
    (unless they name one): two deployments on one Ray keep their series apart."""
    metrics = options.setting(MetricsSettings, MetricsSettings())
    if metrics.deployment is not None:
        return options
    others = tuple(s for s in options.capabilities if not isinstance(s, MetricsSettings))
    labelled = dataclasses.replace(metrics, deployment=deployment)
    return dataclasses.replace(options, capabilities=(*others, labelled))


def _claim(launch: RayLaunch, name: str, actor_class: Any, *args: Any) -> Any:
    """Create the named actor ``name`` of the deployment; a name already taken means that a
    deployment of that name runs, or is being launched: refused, never joined."""
    try:
        return actor_class.remote(*args)
    except ValueError as exc:
        if "already taken" not in str(exc):
            raise
        raise ConfigurationError(
            f"a raygrain deployment named {launch.name!r} is already running (or starting) on "
            "this Ray: join it with Cluster.connect(name=...), stop it with 'raygrain down "
            f"--name {launch.name}', or choose another name"
        ) from None


async def _undo(deployment: str, handles: dict[str, Any]) -> None:
    """Stop what a failed launch started. Shielded: a second Ctrl-C does not cut it short."""
    if CONTROLLER_NAME in handles:
        # The namespace is ours: stop all of it, silos being started included.
        undo: Any = stop_everything(deployment)
    else:
        for handle in handles.values():
            _kill(handle)
        undo = asyncio.sleep(0)
    task = asyncio.ensure_future(undo)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


def _launch_failure(launch: RayLaunch, exc: BaseException) -> BaseException:
    """The error a failed launch raises: Ray's wrapping taken off a raygrain error, and an
    actor module the Ray workers cannot import named, with the fix."""
    cause = getattr(exc, "cause", None)
    if isinstance(exc, ray.exceptions.RayError):
        missing = _MISSING_MODULE.search(str(exc))
        if missing is not None:
            return ConfigurationError(
                f"deployment {launch.name!r}: Ray's workers cannot import module "
                f"{missing.group(1)!r} (of the actor classes or what they import): ship it with "
                "runtime_env={'working_dir': ...} or {'py_modules': [...]}, or install it on "
                "every node"
            )
        if isinstance(exc, RaygrainError) and isinstance(cause, RaygrainError):
            return cause
        unloadable = _CANNOT_LOAD.search(str(exc))
        if unloadable is not None:
            # (A module that is there but fails to import on the workers: a dependency missing
            # there, a setting it reads at import, another Python. Ray's words for it are an
            # ActorDiedError whose arguments "could not be computed".)
            return ConfigurationError(
                f"deployment {launch.name!r}: Ray's workers could not load the actor classes "
                f"(or what they import): {unloadable.group(1).strip()[:500]}; make their "
                "modules import on every node as they do here"
            )
    return exc


_MISSING_MODULE = re.compile(r"No module named '([^']+)'")
_CANNOT_LOAD = re.compile(r"RaySystemError: System error: ([^\n]+)")


def _controller(launch: RayLaunch, options: SiloOptions | None, standby: bool) -> Any:
    name = STANDBY_NAME if standby else CONTROLLER_NAME
    return _claim(
        launch,
        name,
        ControllerActor.options(  # type: ignore[attr-defined]
            name=name,
            namespace=launch.namespace,
            lifetime="detached" if launch.detached else None,
            runtime_env=launch.actor_runtime_env(),
            resources=_ON_HEAD,
        ),
        launch.namespace,
        launch.detection,
        launch.storage,
        None if standby else launch,
        options,
        launch.plane if launch.transport == "direct" else None,
        standby,
    )


def _forget_handles(namespace: str | None = None) -> None:
    for key in [k for k in _handles if namespace is None or k[0] == namespace]:
        del _handles[key]


async def stop_everything(deployment: str = DEFAULT_DEPLOYMENT) -> list[str]:
    """Stop the deployment ``deployment``: its silos (state is already durable), then its
    storage server and controller. Whatever fails on the way (a dead storage server, an
    unreachable controller), every actor of the deployment is stopped; returns the silos'
    names."""
    namespace = namespace_of(deployment)
    names = find_silos(deployment)
    controller = lookup(CONTROLLER_NAME, namespace)
    if controller is not None:
        # First, so that it starts no silo for the nodes the next steps empty.
        await _quietly(controller.halt.remote(), "halt controller")
        await _quietly(
            asyncio.gather(*(controller.remove.remote(n) for n in names)), "tidy the view"
        )
    silos = [h for h in (lookup(n, namespace) for n in names) if h is not None]
    await asyncio.gather(
        *(_quietly(s.stop.remote(), "stop silo", _STOP_TIMEOUT) for s in silos),
    )
    for handle in silos:
        _kill(handle)
    server = lookup(STORAGE_NAME, namespace)
    if server is not None:
        await _quietly(server.aclose.remote(), "close storage server")
        _kill(server)
    standby = lookup(STANDBY_NAME, namespace)
    if standby is not None:
        _kill(standby)
    if controller is not None:
        _kill(controller)
    _forget_handles(namespace)
    return names


def _kill(handle: Any) -> None:
    try:
        ray.kill(handle, no_restart=True)
    except Exception as exc:
        get_logger().info("kill_failed", error=repr(exc))


async def _quietly(work: Any, what: str, timeout: float = 10.0) -> None:
    """Await ``work``; a failure is logged, not raised (shutdown goes on whatever fails)."""
    try:
        await asyncio.wait_for(work, timeout)
    except Exception as exc:
        get_logger().warning("shutdown_step_failed", step=what, error=repr(exc))
