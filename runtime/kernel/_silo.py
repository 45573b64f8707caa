"""The silo: hosts many activations in one event loop and serves the calls routed to it.

A silo accepts requests for the actors the ring places on it (forwarding the rest), checks
them (registered type, public method, arguments that bind), activates actors on first call,
collects idle activations, and answers through its transport. The same class runs in-process
and inside a Ray actor: only the transport given to it differs.
"""

from __future__ import annotations

import asyncio
import contextvars
import decimal
import threading
from asyncio.tasks import _enter_task, _leave_task
from collections.abc import Coroutine, Generator
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from raygrain.actors import (
    Actor,
    ActorId,
    ActorMethod,
    DeactivationReason,
    RaygrainError,
    SerializationError,
    SiloUnavailableError,
    TransactionAbortedError,
    current_invoker,
    decode,
    encode,
    encode_error,
)
from raygrain.runtime.kernel._activation import Activation, ActivationState, Delivery
from raygrain.runtime.kernel._caller import Caller, CallSettings, current_chain
from raygrain.runtime.kernel._clock import Clock
from raygrain.runtime.kernel._logging import get_logger
from raygrain.runtime.kernel._messages import Request, Response
from raygrain.runtime.kernel._registry import ActorRegistry, check_arguments
from raygrain.runtime.kernel._transport import Transport
from raygrain.runtime.kernel._view import Membership
from raygrain.runtime.transactions import (
    SYSTEM_METHODS,
    TX_COMMIT,
    TX_COORDINATE,
    TX_PREPARE,
    Coordinator,
    TransactionSettings,
    TxTicket,
    current_transaction,
    decode_participants,
)
from raygrain.storage import QueuedWrites, StorageProvider

__all__ = ["Silo", "SiloOptions"]

_MAX_FORWARD_HOPS = 3
_MAX_IDLE_RUNNERS = 4096
# Turns started eagerly inside other eager turns (A calls B calls C ...), at most; deeper ones
# go to a runner task, so that a long call chain cannot exhaust the Python stack.
_MAX_EAGER_DEPTH = 8


class _EagerDepth(threading.local):
    value = 0


_eager = _EagerDepth()


class _Resumed:
    """The rest of a turn that started eagerly and then had to wait: an awaitable a runner task
    drives, each step inside the turn's own context (as if it had been a task from the start)."""

    __slots__ = ("_pending", "_turn", "context", "throw_first")

    def __init__(
        self, turn: Coroutine[Any, Any, None], pending: Any, context: contextvars.Context
    ) -> None:
        self._turn = turn
        self._pending = pending
        self.context = context
        self.throw_first: BaseException | None = None

    def __await__(self) -> Generator[Any, Any, None]:
        turn, run, pending = self._turn, self.context.run, self._pending
        if self.throw_first is not None:
            try:
                pending = run(turn.throw, self.throw_first)
            except StopIteration:
                return
        while True:
            try:
                sent = yield pending
            except GeneratorExit:
                turn.close()
                raise
            except BaseException as exc:  # a cancellation: the turn decides what it means
                try:
                    pending = run(turn.throw, exc)
                except StopIteration:
                    return
            else:
                try:
                    pending = run(turn.send, sent)
                except StopIteration:
                    return


# What a runner task is handed: a turn not started yet, or the rest of one started eagerly.
_Turn: TypeAlias = "Coroutine[Any, Any, None] | _Resumed"


# Every turn runs in a context that holds the runtime's own variables and nothing else when the
# turn starts (see Silo.run_turn): a runner task's context, or one an eager turn takes.


def _fresh_context() -> contextvars.Context:
    context = contextvars.Context()
    context.run(_set_runtime_variables)
    return context


def _set_runtime_variables() -> None:
    current_chain.set(())
    current_invoker.set(None)
    current_transaction.set(None)
    # The decimal module keeps its context in a context variable that it creates on first use:
    # set it up front, or every turn doing Decimal arithmetic would leave a context unclean.
    decimal.setcontext(decimal.Context())


_RUNTIME_VARIABLES = 4  # how many _set_runtime_variables sets: a clean context holds no more


@dataclass(frozen=True, slots=True)
class SiloOptions:
    """Per-silo settings; every duration is in seconds."""

    default_idle_timeout: float = 15 * 60.0
    collection_period: float = 60.0
    deactivation_timeout: float = 30.0  # how long deactivation waits for running turns
    calls: CallSettings = field(default_factory=CallSettings)
    transactions: TransactionSettings = field(default_factory=TransactionSettings)


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
    ) -> None:
        self.name = name
        self.registry = registry
        self.storage = storage
        # A provider whose writes wait lets a changing turn end without a task waiting for it.
        self.queue_write = storage.queue_write if isinstance(storage, QueuedWrites) else None
        self.transport = transport
        self.membership = membership
        self.clock = clock
        self.options = options
        self.caller = Caller(name, transport, membership, registry, options.calls, local_silo=name)
        self.activations: dict[ActorId, Activation] = {}
        self._routes: dict[tuple[str, str], tuple[type[Actor[Any]], ActorMethod, bool]] = {}
        self.workers: dict[ActorId, list[Activation]] = {}
        self.calls_received = 0
        self.collections = 0
        self.closed = False
        self._tasks: set[asyncio.Future[Any]] = set()
        self._collector: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._collected = asyncio.Event()
        self._idle_runners: list[tuple[asyncio.Task[None], asyncio.Future[_Turn]]] = []
        self._contexts: list[contextvars.Context] = []  # clean ones, for eager turns
        # Set by a Ray silo host after a membership change: new activations of ring-placed
        # actors wait for it (see SiloHostImpl), so that an actor's previous owner is done.
        self.activation_gate: asyncio.Future[None] | None = None
        self.coordinator = Coordinator(self, storage, options.calls.default_timeout)
        self.locked: set[Activation] = set()  # activations a transaction holds
        self._lock_sweeper: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._collector = self._loop.create_task(self._collect_periodically())

    async def aclose(self) -> None:
        """Deactivate every activation (running turns finish first), then stop."""
        if self.closed:
            return
        self.closed = True
        if self._collector is not None:
            self._collector.cancel()
        if self._lock_sweeper is not None:
            self._lock_sweeper.cancel()
        await self.deactivate_all(DeactivationReason.SHUTDOWN)
        self.caller.close()
        self._idle_runners.clear()
        # Whatever still runs now outlived the deactivation timeout: cancel it rather than let
        # one endless turn hold the shutdown hostage.
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

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
        if request.method in SYSTEM_METHODS:
            self._deliver_system(request)
            return
        try:
            route = self._routes.get((request.target.type_name, request.method))
            if route is None:
                route = self._learn_route(request.target.type_name, request.method)
            cls, method, stateless = route
            # A sender that routed with our view already picked us; otherwise check the ring.
            if (
                not stateless
                and request.view_version != self.membership.view.version
                and not self._owns(request)
            ):
                return
            try:
                args, kwargs = decode(request.payload)
            except SerializationError as exc:
                raise SerializationError(
                    f"arguments of {request.target.type_name}.{request.method}: {exc}"
                ) from None
            check_arguments(request.target.type_name, method, args, kwargs)
        except RaygrainError as exc:
            self.reply_error(request, exc, f"{request.target}.{request.method} on {self.name}")
            return
        delivery = Delivery(request, method, args, kwargs, self.loop_time() + request.timeout)
        if method.options.transactional:
            delivery.tx = (
                TxTicket.started_here()
                if request.transaction is None
                else TxTicket.from_header(request.transaction, joins=True)
            )
        elif request.transaction is not None:
            # Not a transactional method: it joins nothing, but it may run inside a
            # transaction that already holds the actor (and then commits with it).
            delivery.tx = TxTicket.from_header(request.transaction, joins=False)
        activation = self._worker_for(request.target, cls) if stateless else None
        if activation is None:
            activation = self.activations.get(request.target) or self._activate(request.target, cls)
        if method.options.one_way:
            # Fire and forget: acknowledge acceptance now; the caller waits on nothing, so the
            # turn is no part of its call chain either.
            self.reply(request, True, b"")
            request.chain = ()
        activation.enqueue(delivery)

    def _learn_route(
        self, type_name: str, method_name: str
    ) -> tuple[type[Actor[Any]], ActorMethod, bool]:
        cls = self.registry.resolve(type_name)
        method = self.registry.method(cls, method_name)
        route = (cls, method, cls.__actor_options__.stateless_worker)
        self._routes[(type_name, method_name)] = route
        return route

    def deliver_response(self, response: Response) -> None:
        self.caller.deliver_response(response)

    def _owns(self, request: Request) -> bool:
        owner = self.membership.ring.owner(request.target)
        if owner == self.name:
            return True
        # The sender's ring was older or newer than ours: pass the call on, a bounded number of
        # times so that two silos with different views cannot bounce it forever.
        if request.hops >= _MAX_FORWARD_HOPS:
            return True
        request.hops += 1
        try:
            self.transport.send(owner, request)
        except RaygrainError as exc:
            self.reply_error(request, exc, f"{request.target}.{request.method}")
        return False

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

    # -- transactions ------------------------------------------------------------------------

    def _deliver_system(self, request: Request) -> None:
        try:
            args = decode(request.payload)
        except SerializationError as exc:
            self.reply_error(request, exc, f"{request.method} on {self.name}")
            return
        where = f"{request.method} {request.target} on {self.name}"
        if request.method == TX_COORDINATE:
            # The client's transaction block ends: commit it from here (a silo has storage).
            self.spawn(self._coordinate(request, str(args[0]), decode_participants(args[1])))
            return
        if request.view_version != self.membership.view.version and not self._owns(request):
            return
        try:
            result = self.participant_message(request.target, request.method, args)
        except RaygrainError as exc:
            self.reply_error(request, exc, where)
            return
        self.reply(request, True, b"" if result is None else encode(result))

    def participant_message(self, target: ActorId, method: str, args: list[Any]) -> Any:
        """Apply a prepare, commit or abort to ``target``'s activation here; the coordinator
        calls this directly for the participants it hosts."""
        activation = self.activations.get(target)
        txid = str(args[0])
        if method == TX_PREPARE:
            if activation is None:
                raise TransactionAbortedError(
                    f"{target} is no longer active here: its changes in transaction {txid} are gone"
                )
            return list(activation.tx_prepare(txid))
        if activation is not None:
            if method == TX_COMMIT:
                activation.tx_commit(txid, args[1])
            else:
                activation.tx_abort(txid, bool(args[1]))
        return None

    def lock_taken(self, activation: Activation) -> None:
        self.locked.add(activation)
        if self._lock_sweeper is None:
            self._lock_sweeper = asyncio.get_running_loop().create_task(self.sweep_locks())

    async def sweep_locks(self) -> None:
        """End the transactions whose lease or decision timeout ran out. One sweep for all
        locks rather than a timer per lock: timers cost more than the lock itself."""
        settings = self.options.transactions
        period = min(0.25, settings.lease / 4, settings.decision_timeout / 4)
        while not self.closed:
            await asyncio.sleep(period)
            now = self.loop_time()
            for activation in [a for a in self.locked if a.tx and a.tx.expires_at <= now]:
                activation.tx_expired()

    def hosts(self, actor_id: ActorId) -> bool:
        return not self.closed and self.membership.ring.owner(actor_id) == self.name

    async def _coordinate(self, request: Request, txid: str, participants: list[ActorId]) -> None:
        try:
            await self.coordinator.commit(txid, participants)
        except RaygrainError as exc:
            self.reply_error(request, exc, f"commit of transaction {txid} on {self.name}")
            return
        self.reply(request, True, b"")

    # -- replying ----------------------------------------------------------------------------

    def reply(
        self, request: Request, ok: bool, payload: bytes, joined: tuple[ActorId, ...] = ()
    ) -> None:
        self.transport.reply(request.reply_to, Response(request.call_id, ok, payload, joined))

    def reply_error(self, request: Request, error: BaseException, where: str) -> None:
        self.reply(request, False, encode_error(error, where))

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
        while True:
            await self.clock.sleep(self.options.collection_period)
            try:
                await self.collect_idle()
            except Exception as exc:  # keep collecting: one bad hook must not stop the loop
                get_logger().error("idle_collection_failed", silo=self.name, error=repr(exc))

    def _all_workers(self) -> list[Activation]:
        return [worker for pool in self.workers.values() for worker in pool]

    # -- plumbing ----------------------------------------------------------------------------

    def run_turn(self, turn: Coroutine[Any, Any, None], eager: bool = False) -> bool | None:
        """Run a turn on a runner task: an idle one, or a new one.

        Creating an asyncio task costs more than a whole in-process call (the task registry is
        a WeakSet in Python code), so finished runners wait for the next turn instead of ending.
        An ``eager`` turn starts on the spot, in the caller's stack but as its runner's task
        (``asyncio.current_task()``, timeouts and cancellation all belong to the runner),
        until it first has to wait; most in-process turns never do, so they answer before
        ``deliver_request`` returns, saving a trip through the event loop. The runner drives
        the rest. Each turn sets the runtime's context variables when it starts.

        Context variables set in a turn are seen by no other turn, and none flow in from the
        caller (they could not cross processes either): a turn runs in a clean context, a
        runner's own or (eager) one kept from an earlier turn that left it clean, and a runner
        whose turn set variables of its own retires (see ``_runner``).
        Returns whether the turn is over (it started eagerly and never had to wait), or None
        when it could not start eagerly (no idle runner, or nested too deep).
        """
        idle = self._idle_runner()
        if not eager or idle is None or _eager.value >= _MAX_EAGER_DEPTH:
            # (An eager start needs a runner that is already running: one not started yet
            # would die of a cancellation the turn asks for before the runner first runs.)
            waiter = idle[1] if idle is not None else self._new_runner()
            waiter.set_result(turn)
            return None if eager else False
        runner, waiter = idle
        loop = waiter.get_loop()
        contexts = self._contexts
        context = contexts.pop() if contexts else _fresh_context()
        caller = asyncio.current_task(loop)
        if caller is not None:
            _leave_task(loop, caller)
        _enter_task(loop, runner)
        _eager.value += 1
        try:
            pending = context.run(turn.send, None)
        except StopIteration:
            self._idle_runners.append((runner, waiter))
            self._recycle(context)
            return True
        except Exception as exc:  # a turn reports its own errors; this is a runtime bug
            get_logger().error("turn_crashed", silo=self.name, error=repr(exc))
            self._idle_runners.append((runner, waiter))
            return True
        finally:
            _eager.value -= 1
            _leave_task(loop, runner)
            if caller is not None:
                _enter_task(loop, caller)
        waiter.set_result(_Resumed(turn, pending, context))
        return False

    def _idle_runner(self) -> tuple[asyncio.Task[None], asyncio.Future[_Turn]] | None:
        """An idle runner and the future it waits on for its next turn, if any. A runner whose
        turn cancelled it (``asyncio.current_task().cancel()``) wakes up cancelled and ends:
        its future is cancelled, and it is passed over here."""
        idle = self._idle_runners
        while idle:
            runner, waiter = idle.pop()
            if not waiter.done():
                return runner, waiter
        return None

    def _recycle(self, context: contextvars.Context) -> None:
        """Keep an eager turn's context for a later one if the turn left it clean (a fresh
        context per turn costs an allocation, three variable sets and garbage collection)."""
        if len(context) == _RUNTIME_VARIABLES and len(self._contexts) < _MAX_IDLE_RUNNERS:
            self._contexts.append(context)

    def _new_runner(self) -> asyncio.Future[_Turn]:
        waiter: asyncio.Future[_Turn] = asyncio.get_running_loop().create_future()
        # The task's context is a copy of a clean one, not of its creator's: nothing flows
        # from the creator into the runner's turns.
        self.spawn_clean(self._runner(waiter))
        return waiter

    async def _runner(self, waiter: asyncio.Future[_Turn]) -> None:
        """Run the turns handed over by ``waiter`` until the silo closes, enough runners idle,
        or a turn leaves the task's context unclean (then this runner ends, and the variables
        the turn set end with it)."""
        me = asyncio.current_task()
        assert me is not None
        while True:
            try:
                turn = await waiter
            except asyncio.CancelledError as exc:
                if not waiter.done() or waiter.cancelled():
                    raise  # cancelled while idle: the silo is closing
                # Cancelled after being handed a turn (one that set a very short timeout while
                # it started eagerly): the cancellation is the turn's.
                turn = waiter.result()
                if isinstance(turn, _Resumed):
                    turn.throw_first = exc
            try:
                await turn
            except Exception as exc:  # a turn reports its own errors; this is a runtime bug
                get_logger().error("turn_crashed", silo=self.name, error=repr(exc))
            else:
                if isinstance(turn, _Resumed):  # an eager turn's own context
                    self._recycle(turn.context)
            if (
                self.closed
                or len(self._idle_runners) >= _MAX_IDLE_RUNNERS
                or len(contextvars.copy_context()) != _RUNTIME_VARIABLES
            ):
                return
            waiter = me.get_loop().create_future()
            self._idle_runners.append((me, waiter))

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
        return _fresh_context().run(self.spawn, coroutine)

    def loop_time(self) -> float:
        loop = self._loop or asyncio.get_running_loop()
        return loop.time()

    def stats(self) -> dict[str, Any]:
        return {
            "silo": self.name,
            "activations": len(self.activations) + sum(len(p) for p in self.workers.values()),
            "calls_received": self.calls_received,
            "closed": self.closed,
        }
