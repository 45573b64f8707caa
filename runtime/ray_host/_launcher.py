"""Joining raygrain deployments on Ray: the client side.

``RayBackend`` is what ``Cluster.ray`` and ``Cluster.connect`` run on: it starts (or joins)
Ray, launches the deployment (``Cluster.ray``; see ``_deploy``), and gives the client a
``RayTransport`` (or the direct plane) and the controller's membership view, which it follows,
to a deployment brought up again under its name too. The ``raygrain`` CLI uses the same
functions.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import socket
import sys
import uuid
from typing import Any

import ray

from raygrain.actors import ClusterUnreachableError, ConfigurationError
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
from raygrain.runtime.ray_host._actors import CONTROLLER_NAME, STANDBY_NAME, lookup, resolver
from raygrain.runtime.ray_host._deploy import (
    _forget_handles,
    launch,
    list_deployments,
    stop_everything,
)
from raygrain.runtime.ray_host._direct import (
    Locator,
    PlaneSwitch,
    check_transport,
)
from raygrain.runtime.ray_host._host import follow_standby
from raygrain.runtime.ray_host._launch import DEFAULT_DEPLOYMENT, RayLaunch, namespace_of
from raygrain.runtime.ray_host._transport import CLIENT_PREFIX, RayTransport
from raygrain.runtime.wire import WireTransport

__all__ = ["RayBackend", "ensure_ray"]


def ensure_ray(
    address: str | None,
    local_code: bool | None = None,
    runtime_env: dict[str, Any] | None = None,
) -> bool:
    """Connect to Ray (start a local one when there is no address); True if we started it.

    ``address`` None means ``RAY_ADDRESS`` when set (as ``ray.init()`` does), else a new local
    Ray. ``local_code`` (default: when starting a local Ray) lets workers import what this
    process imports, by handing them its ``sys.path``: that is how actor classes from the user's
    own modules reach the silos on one machine. On a remote cluster, ship code with Ray's
    ``runtime_env`` (``working_dir`` or ``py_modules``) instead.
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and address.startswith("ray://") and importlib.util.find_spec("grpc") is None:
        raise ConfigurationError(
            f"{address} is a Ray Client address, which needs Ray's client extra: "
            "pip install 'raygrain[client]' (or 'ray[client]')"
        )
    if address and address != "auto":
        _check_listening(address)
    elif address == "auto" and os.environ.get("RAY_ADDRESS", "auto") != "auto":
        # Ray's "auto" means RAY_ADDRESS first: check that, naming where it came from.
        _check_listening(os.environ["RAY_ADDRESS"], "RAY_ADDRESS=")
    if local_code is None:
        local_code = address is None
    env: dict[str, Any] = dict(runtime_env or {})
    if local_code:
        env_vars = dict(env.get("env_vars") or {})
        env_vars.setdefault("PYTHONPATH", os.pathsep.join(p for p in sys.path if p))
        env["env_vars"] = env_vars
    try:
        ray.init(
            # "local" starts a fresh Ray even when another one runs on this machine.
            address=address or "local",
            runtime_env=env or None,
            logging_level=logging.WARNING,
            log_to_driver=True,
        )
    except ConnectionError as exc:
        if address is None:
            raise
        if address == "auto" and os.environ.get("RAY_ADDRESS", "auto") == "auto":
            # (No Ray found on this machine: nothing was checked to be listening.)
            raise ClusterUnreachableError(
                f"cannot connect to Ray (auto): {exc}: start it with 'ray start --head', or "
                "give its address (or RAY_ADDRESS)"
            ) from exc
        # Something answered (checked above), yet Ray let us not in: most often a cluster
        # with token authentication (Ray 2.60's default for `ray start`) and a client without
        # its settings, which Ray says only in its own log lines.
        raise ClusterUnreachableError(
            f"Ray at {address} did not accept the connection ({exc}): if it runs with token "
            "authentication (the default of 'ray start'), set RAY_AUTH_MODE=token in this "
            "process's environment and give it the cluster's token (the file "
            "~/.ray/auth_token, or RAY_AUTH_TOKEN); on a trusted machine, RAY_AUTH_MODE=disabled "
            "on 'ray start' and here turns it off"
        ) from exc
    return address is None


_started_ray_by: set[RayBackend] = set()  # open backends in a Ray that one of them started


def _check_listening(address: str, source: str = "") -> None:
    """Fail at once when nothing listens at the address's ``host:port``: Ray itself retries
    for minutes, blocking this thread (the ``raygrain`` CLI checks the same way)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # (Ray's to make sense of)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=_REACH_TIMEOUT).close()
    except OSError as exc:
        raise ClusterUnreachableError(
            f"cannot connect to Ray at {source}{address} "
            f"({exc.strerror or type(exc).__name__}): start it with 'ray start --head', or pass "
            "the right address (or RAY_ADDRESS)"
        ) from None


_REACH_TIMEOUT = 5.0  # seconds to wait for Ray's port to accept a connection


class RayBackend:
    """The client side of a Ray-hosted deployment, and the deployment it launched (if any)."""

    def __init__(
        self,
        address: str | None,
        launch: RayLaunch | None,
        options: SiloOptions,
        deployment: str = DEFAULT_DEPLOYMENT,
        runtime_env: dict[str, Any] | None = None,
        transport: str = "direct",
    ) -> None:
        self.address = address
        self.launch = launch
        self.options = options
        self.deployment = launch.name if launch is not None else deployment
        self.namespace = namespace_of(self.deployment)
        self.runtime_env = runtime_env
        self.membership = Membership()
        self.client_address = f"{CLIENT_PREFIX}{uuid.uuid4().hex[:12]}"
        self.transport_choice = check_transport(transport)
        self._resolve = resolver(self.namespace)
        self.ray_transport = RayTransport(self.client_address, self._resolve)
        self.wire: WireTransport | None = None
        self.transport = PlaneSwitch(self.ray_transport)
        self.handles: dict[str, Any] = {}
        self._follower: asyncio.Task[None] | None = None
        self._controller: Any = None
        self._standby: Any = None
        self.caller: Caller | None = None

    def make_caller(self, registry: ActorRegistry) -> Caller:
        caller = Caller(
            self.client_address,
            self.transport,
            self.membership,
            registry,
            self.options.calls,
            filters=client_filters(self.options, metrics=False),  # not exported from a driver
        )
        self.ray_transport.bind(caller)
        self.caller = caller
        return caller

    async def start(self) -> None:
        if ensure_ray(self.address, runtime_env=self.runtime_env) or _started_ray_by:
            _started_ray_by.add(self)  # this Ray is ours: the last of us to close shuts it down
        try:
            await self._start()
        except BaseException:
            await self.aclose()
            raise

    async def _start(self) -> None:
        if self.launch is not None:
            self.handles = await launch(self.launch, self.options)  # (refuses a name in use)
        try:
            self._controller = ray.get_actor(CONTROLLER_NAME, namespace=self.namespace)
        except ValueError:
            raise ConfigurationError(
                f"no raygrain deployment named {self.deployment!r} on Ray at "
                f"{self.address or os.environ.get('RAY_ADDRESS') or 'this process'}: start one "
                "with 'raygrain up --name ...' or Cluster.ray(name=...) (deployments running: "
                f"{', '.join(list_deployments()) or 'none'})"
            ) from None
        self._standby = lookup(STANDBY_NAME, self.namespace)
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
            plane.options(listening=False),
            Locator(self._resolve),
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
                # Ready before the first call to each (a call is answered by the silo it
                # was sent to, forwarded ones too: that silo relays the new owner's answer).
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
        failures = 0
        while True:
            try:
                blob = await self._controller.wait_view.remote(self.membership.view.version, 10.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                if not failures & (failures - 1):  # the 1st, 2nd, 4th...: not twice a second
                    get_logger().warning(
                        "client_view_follow_failed",
                        deployment=self.deployment,
                        failures=failures,
                        error=repr(exc),
                    )
                blob = await follow_standby(self._standby, self.membership.view.version)
                if blob is None:
                    try:
                        blob = await self._follow_new_incarnation()
                    except Exception as exc:
                        # (A new controller that died as it was reached: its launch failed
                        # and stopped it. Raised from here, it ended the following for good.)
                        get_logger().info(
                            "client_follow_new_deployment_failed",
                            deployment=self.deployment,
                            error=repr(exc),
                        )
                if blob is None:
                    continue
            else:
                failures = 0
            self._apply_view(blob)

    async def _follow_new_incarnation(self) -> bytes | None:
        """The first view of the deployment brought up again under its name, whose controller
        this client now follows; None while the controller it knows is the one there (Ray
        restarting it), or there is none (the deployment is down: calls fail at once)."""
        controller = lookup(CONTROLLER_NAME, self.namespace)
        if controller is None or controller._actor_id == self._controller._actor_id:
            return None
        blob: bytes = await controller.get_view.remote()
        get_logger().warning("client_follows_new_deployment", deployment=self.deployment)
        self._controller, self._standby = controller, lookup(STANDBY_NAME, self.namespace)
        gone = [name for name, _ in self.membership.view.silos]
        self.membership.restart()  # (the new controller numbers its views from the start)
        if self.caller is not None:
            for name in gone:
                self.caller.fail_calls_to(name)
        if self.wire is not None:  # (the old direct plane's secret is not the new one's)
            wire, self.wire = self.wire, None
            self.transport.use(self.ray_transport)
            await wire.aclose()
        if self.transport_choice == "direct":
            await self._use_direct_plane()
        return blob

    async def stats(self) -> list[dict[str, Any]]:
        """Figures of every live silo in the view (dead ones are listed in the view only)."""
        names = self.membership.view.active()
        return list(await asyncio.gather(*(self._resolve(n).stats.remote() for n in names)))

    async def aclose(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
        if ray.is_initialized():
            for name in {n for n, _ in self.membership.view.silos}:
                try:
                    self._resolve(name).forget_client.remote(self.client_address)
                except Exception:
                    pass
        if self.wire is not None:
            await self.wire.aclose()
        await self.ray_transport.aclose()
        try:
            # Only what this cluster started: a connected client (launch None) or a detached
            # deployment (raygrain up) leaves every silo running.
            if self.launch is not None and not self.launch.detached and self.handles:
                await stop_everything(self.deployment)
        finally:
            self.handles.clear()
            if self in _started_ray_by:
                _started_ray_by.discard(self)
                if not _started_ray_by:
                    _forget_handles()
                    ray.shutdown()
