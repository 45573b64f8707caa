"""The silo: hosts many activations in one event loop and serves the calls routed to it.

A silo accepts requests for the actors the ring places on it (forwarding the rest), checks
them (registered type, public method, arguments that bind), activates actors on first call,
collects idle activations, and answers through its transport. The same class runs in-process
and inside a Ray actor: only the transport given to it differs. Capabilities (transactions,
timers, ...) join it as ``Extension``s (see ``_extensions``); the silo knows none of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from raygrain.actors import (
    Actor,
    ActorId,
    ActorMethod,
    DeactivationReason,
    MalformedMessageError,
    RaygrainError,
    SerializationError,
    SiloUnavailableError,
    decode,
    encode_error,
)
from raygrain.runtime.kernel._activation import Activation, ActivationState, Delivery
from raygrain.runtime.kernel._caller import Caller, CallSettings
from raygrain.runtime.kernel._clock import Clock, SystemClock, reads_monotonic
from raygrain.runtime.kernel._collector import DEFAULT_GC_THRESHOLD
from raygrain.runtime.kernel._extensions import (
    Extension,
    SystemHandler,
    TurnTimings,
    overrides,
)
from raygrain.runtime.kernel._logging import get_logger
from raygrain.runtime.kernel._messages import Malformed, Request, Response
from raygrain.runtime.kernel._registry import ActorRegistry, check_arguments
from raygrain.runtime.kernel._runners import TurnRunners, fresh_context
from raygrain.runtime.kernel._switching import DEFAULT_SWITCH_INTERVAL, hold_process_settings
from raygrain.runtime.kernel._transport import Transport
from raygrain.runtime.kernel._view import Membership, MembershipView
from raygrain.storage import QueuedWrites, StorageProvider

__all__ = ["Silo", "SiloOptions"]

_MAX_FORWARD_HOPS = 3
_VIEW_CATCH_UP_SECONDS = 5.0  # a newer sender's view awaited here (at most half the timeout)
_MAX_INTERNAL_TIMINGS = 10_000  # internal turns' timings kept (their names come and go)

# How a silo delivers a user method: the class, the method, whether it is a stateless worker,
# the extensions' timings of its turns (found once per type and method: every call reads it).
_Route = tuple[type[Actor[Any]], ActorMethod, bool, tuple[TurnTimings, ...]]
S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class SiloOptions:
    """Per-silo settings; every duration is in seconds."""

    default_idle_timeout: float = 15 * 60.0
    collection_period: float = 60.0
    deactivation_timeout: float = 30.0  # how long deactivation waits for running turns
    # Calls queued per activation, at most; more are refused with ActorOverloadedError.
    max_queued_calls: int = 10_000
    calls: CallSettings = field(default_factory=CallSettings)
    # Settings of the capabilities (e.g. a TransactionSettings), found by type: see setting().
    capabilities: tuple[Any, ...] = ()
    # The process's collector threshold and switch interval while the silo runs (None: left
    # alone); see _collector, _switching.
    gc_threshold: int | None = DEFAULT_GC_THRESHOLD
    switch_interval: float | None = DEFAULT_SWITCH_INTERVAL

    def setting(self, kind: type[S], default: S) -> S:
        """The capability settings of type ``kind`` given here, else ``default``."""
        return next((s for s in self.capabilities if isinstance(s, kind)), default)


class Silo:
    def __init__(
        self,
        name: str,
        registry: ActorRegistry,
        storage: StorageProvider,
        transport: Transport,
        membership: Membership,
        clock: Clock,
        options: SiloOptions = SiloOptions(),
        extensions: Sequence[Extension] = (),
    ) -> None:
        self.name = name
        self.registry = registry
        self.extensions = tuple(extensions)
        for extension in self.extensions:
            if overrides(extension, "wrap_storage"):
                storage = extension.wrap_storage(storage)
        self.storage = storage
        # A provider whose writes wait lets a changing turn end without a task waiting for it.
        self.queue_write = storage.queue_write if isinstance(storage, QueuedWrites) else None
        self.transport = transport
        self.membership = membership
        self.clock = clock
        # Reads time.monotonic (the loop's clock): a turn's end read also ends its timing.
        self.clock_is_monotonic = type(clock) is SystemClock
        self.options = options
        self.started_at = time.time()
        filters = tuple(f for e in self.extensions if (f := e.call_filter()) is not None)
        self.caller = Caller(
            name, transport, membership, registry, options.calls, local_silo=name, filters=filters
        )
        self.activations: dict[ActorId, Activation] = {}
        self._routes: dict[tuple[str, str], _Route] = {}
        # Internal turns' timings (timers, reminders, streams), by type and name.
        self._internal_timings: dict[tuple[str, str], tuple[TurnTimings, ...]] = {}
        self.workers: dict[ActorId, list[Activation]] = {}
        self.calls_received = 0
        self.collections = 0
        self.closed = False
        self._tasks: set[asyncio.Future[Any]] = set()
        self._collector: asyncio.Task[None] | None = None
        self._release_held: Callable[[], None] | None = None  # (see _switching)
        self._closing: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # The event loop's clock (deadlines, turn timing): time.monotonic itself once the loop
        # is known to read it (asyncio's own loops do), one call instead of three per read.
        self.loop_time: Callable[[], float] = self._read_loop_time
        self._collected = asyncio.Event()
        self.runners = TurnRunners(self)
        # New ring-placed activations wait for it after a view change (see SiloHostImpl).
        self.activation_gate: asyncio.Future[None] | None = None
        self._system: dict[str, SystemHandler] = {}
        # What capabilities offer an actor instance, by name (see Activation.service).
        self.services: dict[str, Callable[[Activation], Any]] = {}
        # The hooks the extensions implement, collected once (see _extensions.overrides).
        self.on_activated = self._hooks("activated")
        self.on_deactivation_begun = self._hooks("deactivation_begun")
        self.on_deactivating = self._hooks("deactivating")
        self._on_accept = self._hooks("accept")
        self._on_view = self._hooks("view_changed")
        self.on_turn_started = self._hooks("turn_started")
        self.on_turn_ended = self._hooks("turn_ended")
        self._on_stats = self._hooks("stats")
        self._on_timings = self._hooks("turn_timings")
        membership.subscribe(self._view_changed)
        for extension in self.extensions:
            extension.attach(self)

    def _hooks(self, name: str) -> tuple[Any, ...]:
        return tuple(getattr(e, name) for e in self.extensions if overrides(e, name))

    def extension(self, kind: type[S]) -> S | None:
        """The extension of type ``kind`` this silo runs, if any."""
        return next((e for e in self.extensions if isinstance(e, kind)), None)

    def register_system_method(self, name: str, handler: SystemHandler) -> None:
        """Route requests for ``name`` (a runtime-to-runtime message, never a user method) to
        ``handler(request, args)``, which must reply (``reply``/``reply_error``)."""
        if not name.startswith("__"):
            raise ValueError(f"system method names start with '__': {name!r}")
        self._system[name] = handler

    def provide_service(self, name: str, factory: Callable[[Activation], Any]) -> None:
        """Let actors reach a capability: ``Activation.service(name)`` returns
        ``factory(activation)`` (e.g. ``actor.timers``)."""
        self.services[name] = factory

    def _view_changed(self, view: MembershipView) -> None:
        for hook in self._on_view:
            hook(self, view)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if reads_monotonic(self._loop):
            self.loop_time = time.monotonic
        self._collector = self._loop.create_task(self._collect_periodically())
        if self._release_held is None:
            self._release_held = hold_process_settings(self.options)
        for extension in self.extensions:
            extension.start(self)

    async def aclose(self) -> None:
        """Deactivate every activation (running turns finish first), then stop. A caller
        cancelled meanwhile does not cut the closing short: it goes on, and a later aclose()
        waits for it (stopped half-way, it left activations and tasks behind for good)."""
        if self._closing is None:
            self.closed = True
            self._closing = asyncio.get_running_loop().create_task(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        try:
            if self._collector is not None:
                self._collector.cancel()
            await self.deactivate_all(DeactivationReason.SHUTDOWN)
            for extension in self.extensions:
                try:
                    await extension.stop(self)
                except Exception as exc:  # one capability failing to stop must not stop the rest
                    get_logger().error("extension_stop_failed", silo=self.name, error=repr(exc))
            self.membership.unsubscribe(self._view_changed)
            self.caller.close()
            self.runners.clear()
            # Still running after the deactivation timeout: cancelled (no endless turn holds up).
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
        finally:
            if self._release_held is not None:
                self._release_held()

    async def deactivate_all(self, reason: DeactivationReason) -> None:
        everything = [*self.activations.values()]
        for pool in self.workers.values():
            everything.extend(pool)
        await asyncio.gather(*(a.deactivate(reason) for a in everything))

    # -- receiving ---------------------------------------------------------------------------

    def deliver_request(self, request: Request) -> None:
        self.calls_received += 1
        if self.closed:
            self.reply_error(
                request,
                SiloUnavailableError(f"silo {self.name} has stopped; the call did not run"),
                f"{request.target}.{request.method}",
            )
            return
        target = request.target
        # (Every call passes here: the usual case first, then what is rarer.)
        route = self._routes.get((target.type_name, request.method))
        if route is None:
            if request.method in self._system:  # ("__" names: never a user method's route)
                self._deliver_system(request)
                return
            try:
                route = self._learn_route(target.type_name, request.method)
            except RaygrainError as exc:
                self.reply_error(request, exc, f"{target}.{request.method} on {self.name}")
                return
        cls, method, stateless, timings = route
        # A sender that routed with our view already picked us; otherwise check the ring.
        if (
            request.view_version != self.membership.view.version
            and not stateless
            and not self._owns(request)
        ):
            return
        try:
            args, kwargs = decode(request.payload)
        except SerializationError as exc:
            error = SerializationError(f"arguments of {target.type_name}.{request.method}: {exc}")
            self.reply_error(request, error, f"{target}.{request.method} on {self.name}")
            return
        except (TypeError, ValueError):  # msgpack, but not a pair
            args = kwargs = None
        if type(args) is not list or type(kwargs) is not dict:  # (a peer's bug or forgery)
            malformed = MalformedMessageError(
                f"arguments of {target.type_name}.{request.method} are not [args, kwargs]"
            )
            self.reply_error(request, malformed, f"{target}.{request.method} on {self.name}")
            return
        if kwargs or len(args) != method.arity:  # (else they bind: check_arguments' fast path)
            try:
                check_arguments(target.type_name, method, args, kwargs)
            except RaygrainError as exc:
                self.reply_error(request, exc, f"{target}.{request.method} on {self.name}")
                return
        # (Positional: a keyword argument would cost this call its fast path on CPython 3.11.)
        expires_at = self.loop_time() + request.timeout
        delivery = Delivery(request, method, args, kwargs, expires_at, None, True, None, timings)
        for accept in self._on_accept:
            accept(self, delivery)
        if stateless:
            activation = self._worker_for(target, cls)
        else:
            activation = self.activations.get(target) or self._activate(target, cls)
        if method.options.one_way:
            # Fire and forget: acknowledge acceptance now; the caller waits on nothing, so the
            # turn is no part of its call chain either.
            self.reply(request, True, b"")
            request.chain = ()
        activation.enqueue(delivery)

    def _learn_route(self, type_name: str, method_name: str) -> _Route:
        cls = self.registry.resolve(type_name)
        method = self.registry.method(cls, method_name)
        timings = self._timings_of(type_name, method_name)
        route = (cls, method, cls.__actor_options__.stateless_worker, timings)
        self._routes[(type_name, method_name)] = route
        return route

    def turn_timings(self, type_name: str, method: str) -> tuple[TurnTimings, ...]:
        """The extensions' timings of an internal turn (a timer's, a stream's: deliveries the
        silo did not route); a user method's come with its route."""
        key = (type_name, method)
        found = self._internal_timings.get(key)
        if found is None:
            if len(self._internal_timings) >= _MAX_INTERNAL_TIMINGS:  # (names come and go)
                self._internal_timings.clear()
            found = self._internal_timings[key] = self._timings_of(type_name, method)
        return found

    def _timings_of(self, type_name: str, method: str) -> tuple[TurnTimings, ...]:
        return tuple(t for hook in self._on_timings if (t := hook(type_name, method)) is not None)

    def deliver_response(self, response: Response, sender: str | None = None) -> None:
        self.caller.deliver_response(response, sender)

    def _owns(self, request: Request) -> bool:
        if request.view_version > self.membership.view.version and not request.hops:
            # The sender's view is newer than ours (ours is on its way): route the call once
            # ours has caught up. Our older ring could name a silo that view has declared
            # dead, and the call would fail for a death its sender already knew of. (A call
            # passed on was picked by the silo that passed it, whose view it does not carry.)
            self.spawn(self._route_when_caught_up(request))
            return False
        owner = self.membership.ring.owner(request.target)
        if owner == self.name:
            return True
        # The sender's ring was older or newer than ours: pass the call on, a bounded number of
        # times so that two silos with different views cannot bounce it forever.
        if request.hops >= _MAX_FORWARD_HOPS:
            return True
        request.hops += 1
        try:
            self.caller.relay(request, owner)
        except RaygrainError as exc:
            self.reply_error(request, exc, f"{request.target}.{request.method}")
        return False

    async def _route_when_caught_up(self, request: Request) -> None:
        """Deliver ``request`` again once this silo's view is as new as its sender's. If it
        does not come in time (this silo cut off from the membership's updates), the sender's
        pick stands: the call runs here."""
        bound = min(_VIEW_CATCH_UP_SECONDS, request.timeout / 2)
        try:
            await asyncio.wait_for(self.membership.wait_for_view(request.view_version), bound)
        except asyncio.TimeoutError:
            request.view_version = self.membership.view.version  # (taken as ours: it runs here)
        except asyncio.CancelledError:  # the silo is closing
            with contextlib.suppress(Exception):
                self.reply_error(
                    request,
                    SiloUnavailableError(f"silo {self.name} has stopped; the call did not run"),
                    f"{request.target}.{request.method}",
                )
            raise
        self.calls_received -= 1  # (counted when it first came)
        self.deliver_request(request)

    def activation_of(self, actor_id: ActorId) -> Activation:
        """The activation of a registered, ring-placed actor here, activating it if needed
        (for a capability that acts on an actor without a call, e.g. a reminder)."""
        cls = self.registry.resolve(actor_id.type_name)
        return self.activations.get(actor_id) or self._activate(actor_id, cls)

    def _activate(self, actor_id: ActorId, cls: type[Actor[Any]]) -> Activation:
        activation = Activation(self, actor_id, cls)
        self.activations[actor_id] = activation
        activation.start()
        return activation

    def _worker_for(self, actor_id: ActorId, cls: type[Actor[Any]]) -> Activation:
        pool = self.workers.setdefault(actor_id, [])
        for worker in pool:
            if worker.state is ActivationState.VALID and worker.is_idle():
                return worker
        if len(pool) < cls.__actor_options__.max_local_workers:
            worker = Activation(self, actor_id, cls)
            pool.append(worker)
            worker.start()
            return worker
        return min(pool, key=lambda w: w.queued())

    def forget(self, activation: Activation) -> None:
        """Drop a deactivated (or failed) activation from the silo's tables."""
        if self.activations.get(activation.actor_id) is activation:
            del self.activations[activation.actor_id]
        pool = self.workers.get(activation.actor_id)
        if pool is not None and activation in pool:
            pool.remove(activation)
            if not pool:
                del self.workers[activation.actor_id]

    # -- system messages ---------------------------------------------------------------------

    def _deliver_system(self, request: Request) -> None:
        try:
            args = decode(request.payload)
        except SerializationError as exc:
            self.reply_error(request, exc, f"{request.method} on {self.name}")
            return
        self._system[request.method](request, args)

    def owns(self, request: Request) -> bool:
        """Whether this silo should handle ``request`` by the ring (else it was passed on)."""
        return request.view_version == self.membership.view.version or self._owns(request)

    def hosts(self, actor_id: ActorId) -> bool:
        return not self.closed and self.membership.ring.owner(actor_id) == self.name

    # -- replying ----------------------------------------------------------------------------

    def reply(
        self, request: Request, ok: bool, payload: bytes, joined: tuple[ActorId, ...] = ()
    ) -> None:
        self.transport.reply(request.reply_to, Response(request.call_id, ok, payload, joined))

    def reply_error(self, request: Request, error: BaseException, where: str) -> None:
        self.reply(request, False, encode_error(error, where))

    def reply_malformed(self, bad: Malformed) -> None:
        """Answer a malformed message of a batch (see ``unpack_batch``) when it says who to
        answer. The transport that received it logs it (it knows the sender, and limits the
        warnings per sender: ``wire.PeerLog``)."""
        if bad.call_id is None or bad.reply_to is None:
            return
        error = encode_error(MalformedMessageError(bad.reason), f"silo {self.name}")
        self.transport.reply(bad.reply_to, Response(bad.call_id, False, error))

    # -- idle collection ---------------------------------------------------------------------

    async def collect_idle(self) -> int:
        """Deactivate every activation idle longer than its idle timeout; returns how many."""
        now = self.clock.now()
        expired = []
        for activation in [*self.activations.values(), *self._all_workers()]:
            timeout = activation.options.idle_timeout or self.options.default_idle_timeout
            if (
                activation.state is ActivationState.VALID
                and activation.is_idle()
                and now - activation.last_used >= timeout
            ):
                expired.append(activation)
        await asyncio.gather(*(a.deactivate(DeactivationReason.IDLE) for a in expired))
        self.collections += 1
        self._collected.set()
        self._collected = asyncio.Event()
        return len(expired)

    async def wait_for_collection(self, count: int) -> None:
        """Wait until ``count`` idle collections have run (for tests driving a ManualClock)."""
        while self.collections < count:
            await self._collected.wait()

    async def _collect_periodically(self) -> None:
        try:
            while True:
                await self.clock.sleep(self.options.collection_period)
                try:
                    await self.collect_idle()
                except Exception as exc:  # keep collecting: one bad hook must not stop the loop
                    get_logger().error("idle_collection_failed", silo=self.name, error=repr(exc))
        finally:  # (also when a silo never closed is cancelled as its loop ends: asyncio.run)
            if self._release_held is not None:
                self._release_held()

    def _all_workers(self) -> list[Activation]:
        return [worker for pool in self.workers.values() for worker in pool]

    # -- plumbing ----------------------------------------------------------------------------

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coroutine`` as a task the silo keeps a reference to until it ends."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def spawn_clean(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """``spawn``, in a clean context rather than a copy of the current one: for code that
        runs actor code (activation and deactivation hooks), which must see no variables of
        whichever caller or turn happened to trigger it."""
        return fresh_context().run(self.spawn, coroutine)

    def _read_loop_time(self) -> float:
        loop = self._loop or asyncio.get_running_loop()
        return loop.time()

    def stats(self) -> dict[str, Any]:
        figures = {
            "silo": self.name,
            "activations": len(self.activations) + sum(len(p) for p in self.workers.values()),
            "calls_received": self.calls_received,
            "closed": self.closed,
            "uptime_s": time.time() - self.started_at,
            "types": self.registry.names(),
        }
        for stats in self._on_stats:
            figures.update(stats(self))
        return figures
