"""The calling side of a call: encode, route by the ring, wait for the response or the deadline.

Clients and silos both call actors through a ``Caller``. It owns the pending calls of one
endpoint; a response that arrives after its call's deadline finds no pending call and is
dropped. Deadlines are enforced by one sweeper per caller rather than a timer per call: a timer
heap with thousands of entries costs more than the calls themselves, and a deadline is a
guarantee of "no later than", for which a tenth of a second's resolution is enough.
"""

from __future__ import annotations

import asyncio
import os
from array import array
from asyncio import Future, get_running_loop
from collections.abc import Callable, Container
from contextvars import ContextVar
from dataclasses import dataclass, replace
from time import monotonic
from typing import Any

from raygrain.actors import (
    ActorCallTimeout,
    ActorId,
    ClusterClosedError,
    InvalidCallError,
    MessageTooLargeError,
    RaygrainError,
    SerializationError,
    SiloUnavailableError,
    decode_error,
    decoder,
    encode,
    encode_error,
)
from raygrain.runtime.kernel._extensions import (
    FLUSH_TIMINGS_AT,
    CallFilter,
    CallObserver,
    CallTimings,
)
from raygrain.runtime.kernel._logging import get_logger
from raygrain.runtime.kernel._messages import Request, Response
from raygrain.runtime.kernel._registry import ActorRegistry
from raygrain.runtime.kernel._transport import Transport
from raygrain.runtime.kernel._view import Membership

__all__ = ["CallChain", "CallSettings", "Caller", "current_chain"]


class CallChain:
    """The activations waiting on a turn, innermost last (``actors``), for deadlock detection.

    ``open`` while the turn runs. A task the turn started inherits its context, and so this
    chain; once the turn has ended nobody waits on that task through it, so its calls go as
    calls from outside any turn (a call back into an actor of the chain busy in a later turn
    waits for that turn instead of being refused as a deadlock)."""

    __slots__ = ("actors", "open")

    def __init__(self, actors: tuple[ActorId, ...]) -> None:
        self.actors = actors
        self.open = True


# The chain of the current turn; outside actor turns, one with no actors (never closed: only a
# turn's own chain is).
current_chain: ContextVar[CallChain] = ContextVar(
    "raygrain_call_chain",
    default=CallChain(()),  # noqa: B039
)


@dataclass(frozen=True, slots=True)
class CallSettings:
    """Limits every call is made under."""

    default_timeout: float = 30.0
    max_message_bytes: int = 16 * 1024 * 1024
    deadline_resolution: float = 0.05


class CallIds:
    """Call ids nobody else can guess: 63 random bits each, drawn from the OS in bulk.

    A response is matched to its call by id alone, so a process that could predict ids (a
    counter from 1) could answer other callers' calls. Drawing 8 bytes per call from the OS
    costs a system call each; a pool of 4,096 costs one per 4,096 calls."""

    __slots__ = ("_pool",)

    def __init__(self) -> None:
        self._pool = array("Q")

    def __next__(self) -> int:
        pool = self._pool
        if not pool:
            pool.frombytes(os.urandom(8 * 4096))
        return pool.pop() >> 1  # 63 bits: a signed 64-bit integer on any wire


# A caller whose calls keep being answered on the spot yields to the event loop once per this
# many of them.
_YIELD_EVERY = 8


# What a caller keeps per actor type and method (see Caller._learn).
_Facts = tuple[float | None, bool, tuple[CallTimings, ...]]

# A pending call: (future, deadline, destination, request). A tuple rather than an object: one
# is made for every call, and a class's __init__ costs a Python call each time.
_PendingCall = tuple[asyncio.Future[Response], float, str, Request]


class Caller:
    """Makes calls on behalf of the endpoint ``address``."""

    def __init__(
        self,
        address: str,
        transport: Transport,
        membership: Membership,
        registry: ActorRegistry,
        settings: CallSettings,
        local_silo: str | None = None,
        filters: tuple[CallFilter | CallObserver, ...] = (),
    ) -> None:
        self.address = address
        self._transport = transport
        self._membership = membership
        self._registry = registry
        self._settings = settings
        self._local_silo = local_silo
        self._filters = tuple(f for f in filters if hasattr(f, "outgoing"))
        # Observers are timed once per call, by the caller, for all of them.
        self._observers = tuple(f for f in filters if hasattr(f, "call_timings"))
        self._pending: dict[int, _PendingCall] = {}
        self._ids = CallIds()
        # Per actor type and method: its timeout, whether it is a stateless worker, and the
        # observers' timings of its calls (found once: every call reads them).
        self._facts: dict[tuple[str, str], _Facts] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._answered_on_the_spot = 0
        self.responses_refused = 0  # answers from a silo their call was not sent to
        self.closed = False
        # Observers' notifications (streams): a response with a negative call id is a push
        # to an observer of this endpoint, handed to this hook; None drops them.
        self.on_notice: Callable[[Response], None] | None = None
        # Results decode with this caller bound (for the ActorRefs in them), set only when a
        # result holds an extension type.
        self._decode = decoder(self)
        # The event loop a user's cluster started on (set by Cluster.start): its futures,
        # tasks and connections belong to that loop, so a call from another one is refused.
        # None: any loop (a silo's own caller runs on the silo's loop only).
        self.home_loop: asyncio.AbstractEventLoop | None = None

    async def invoke(
        self,
        target: ActorId,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> Any:
        if self.closed:
            raise ClusterClosedError(f"cannot call {target}.{method}: the cluster is closed")
        loop = get_running_loop()
        if loop is not self.home_loop and self.home_loop is not None:
            raise self._foreign_loop(f"{target}.{method}")
        facts = self._facts.get((target.type_name, method)) or self._learn(target, method)
        if timeout is None:
            timeout = facts[0] or self._settings.default_timeout
        try:
            payload = encode([list(args), kwargs])
        except SerializationError as exc:
            raise SerializationError(f"arguments of {target.type_name}.{method}: {exc}") from None
        if len(payload) > self._settings.max_message_bytes:
            raise MessageTooLargeError(
                f"arguments of {target.type_name}.{method} encode to {len(payload)} bytes, over "
                f"the {self._settings.max_message_bytes}-byte message limit (max_message_bytes)"
            )
        call_id = next(self._ids)
        while call_id in self._pending:  # (2**-63 per pending call: practically never)
            call_id = next(self._ids)
        membership = self._membership
        request = Request(
            call_id,
            target,
            method,
            payload,
            self.address,
            timeout,
            chain.actors if (chain := current_chain.get()).open else (),
            view_version=membership.view.version,
        )
        followups: list[Callable[[Response | None], None]] | None = None
        for call_filter in self._filters:
            followup = call_filter.outgoing(request)
            if followup is not None:
                followups = [followup] if followups is None else [*followups, followup]
        try:
            destination = (self._local_silo if facts[1] else None) or membership.ring.owner(target)
        except LookupError:
            if followups is not None:  # (they saw it start: it failed, not sent)
                for followup in followups:
                    followup(None)
            raise self._no_silo(f"{target}.{method}") from None
        timings = facts[2]
        # One clock read for the deadline and the observers' timing alike (asyncio's loop
        # clock is time.monotonic).
        started = monotonic()
        # (_dispatch, inlined: every call passes here)
        future: asyncio.Future[Response] = Future(loop=loop)
        pending = self._pending
        pending[call_id] = (future, started + timeout, destination, request)
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep_deadlines())
        try:
            # (Inside the try: a send that raises ends the call as a failure too, so the
            # filters' followups and the observers hear of every call they saw start.)
            self._transport.send(destination, request)
            if future.done():
                # Answered on the spot (an in-process turn that never had to wait, or a
                # refusal): awaiting a done future does not yield, so a caller calling in a
                # loop would starve every other task. Yield now and then, not every time:
                # a trip through the event loop costs as much as the call itself.
                self._answered_on_the_spot += 1
                if not self._answered_on_the_spot % _YIELD_EVERY:
                    await asyncio.sleep(0)
            response = await future
        except BaseException as exc:
            if followups is not None:  # (the call failed with no response: tell them so)
                for followup in followups:
                    followup(None)
            if timings and isinstance(exc, RaygrainError):
                # A deadline, a lost silo: the observers count it as a failed call.
                failed = Response(call_id, False, encode_error(exc, f"{target}.{method}"))
                _record(timings, monotonic() - started, failed)
            raise
        finally:
            pending.pop(call_id, None)
        if followups is not None:
            for followup in followups:
                followup(response)
        if timings:
            # (_record, inlined: every call passes here)
            seconds = monotonic() - started
            for timing in timings:
                durations = timing.pending
                durations.append(seconds)
                if len(durations) > FLUSH_TIMINGS_AT:
                    timing.flush()
            if not response.ok:
                for timing in timings:
                    timing.failed(response)
        if response.ok:  # (result_of, inlined)
            return self._decode(response.payload) if response.payload else None
        raise decode_error(response.payload)

    @property
    def default_timeout(self) -> float:
        return self._settings.default_timeout

    @property
    def max_message_bytes(self) -> int:
        return self._settings.max_message_bytes

    async def invoke_system(
        self, target: ActorId, method: str, args: list[Any], timeout: float
    ) -> Any:
        """A runtime-to-runtime message (the transaction protocol) to ``target``'s silo."""
        return self.result_of(await self.send_system(target, method, args, timeout))

    def send_system(
        self, target: ActorId, method: str, args: list[Any], timeout: float
    ) -> asyncio.Future[Response]:
        """Send a system message now; the future completes with its response (or fails at the
        deadline). Many can be in flight without a task each."""
        if self.closed:
            raise ClusterClosedError(f"cannot reach {target}: the cluster is closed")
        membership = self._membership
        request = Request(
            next(self._ids),
            target,
            method,
            encode(args),
            self.address,
            timeout,
            view_version=membership.view.version,
        )
        try:
            destination = membership.ring.owner(target)
        except LookupError:
            raise self._no_silo(f"{target}.{method}") from None
        return self._dispatch(request, destination)

    def _foreign_loop(self, call: str) -> InvalidCallError:
        return InvalidCallError(
            f"cannot call {call} from this event loop: the cluster runs on the event loop "
            "that started it (another thread's loop, or an earlier asyncio.run's), and its "
            "connections and answers belong to that loop; from another thread, run the call "
            "there: asyncio.run_coroutine_threadsafe(ref.method(...), loop)"
        )

    def _no_silo(self, call: str) -> Exception:
        """The error of a call with no silo to go to: its view has none alive."""
        if self._local_silo is not None:
            # (A silo's own ring is empty only as its cluster stops: its services expect this.)
            return LookupError("the placement ring has no silos")
        return SiloUnavailableError(
            f"no silo to send {call} to: the cluster has no live silo (its deployment was "
            "taken down, or none of its silos has started yet); the call was not sent"
        )

    def _dispatch(
        self, request: Request, destination: str, now: float | None = None
    ) -> asyncio.Future[Response]:
        """Register ``request`` as pending (its deadline swept) and send it; the future
        completes with its response. The caller pops the pending entry when done waiting.
        ``now``: the time already read, on the loop's clock (asyncio's is ``time.monotonic``)."""
        loop = asyncio.get_running_loop()
        if loop is not self.home_loop and self.home_loop is not None:
            raise self._foreign_loop(f"{request.target}.{request.method}")
        future: asyncio.Future[Response] = loop.create_future()
        deadline = (loop.time() if now is None else now) + request.timeout
        self._pending[request.call_id] = (future, deadline, destination, request)
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep_deadlines())
        try:
            self._transport.send(destination, request)
        except BaseException:
            self._pending.pop(request.call_id, None)
            raise
        return future

    def result_of(self, response: Response) -> Any:
        """The decoded result of ``response``, or its error raised."""
        if response.ok:
            return self._decode(response.payload) if response.payload else None
        raise decode_error(response.payload)

    def deliver_response(self, response: Response, sender: str | None = None) -> None:
        """Complete the call ``response`` answers, if it came from the silo the call was sent to.

        ``sender`` is the silo it came from, as the transport knows it (the peer of an
        authenticated connection, the silo polled or called over Ray); None only for delivery
        inside one process (``LocalTransport``). A silo answers only the calls sent to it: a
        call it forwards is its own call to the new owner, whose answer it relays (``relay``).
        """
        pending = self._pending.get(response.call_id)
        if pending is None:
            if response.call_id < 0 and self.on_notice is not None:
                self.on_notice(response)  # a push to an observer of this endpoint
            return
        future, _, destination, request = pending
        if sender is not None and sender != destination:
            self.responses_refused += 1
            if self.responses_refused & (self.responses_refused - 1) == 0:  # 1, 2, 4, 8...
                get_logger().warning(
                    "response_from_wrong_silo",
                    endpoint=self.address,
                    call=f"{request.target}.{request.method}",
                    sent_to=destination,
                    came_from=sender,
                    refused=self.responses_refused,
                )
            return
        del self._pending[response.call_id]
        if not future.done():
            future.set_result(response)

    def notify(self, address: str, notice: bytes) -> None:
        """Push ``notice`` to an observer at the endpoint ``address`` (no reply; dropped if
        the endpoint is gone)."""
        self._transport.reply(address, Response(-1, True, notice))

    def relay(self, request: Request, destination: str) -> None:
        """Pass on ``request``, a call this silo received for an actor that ``destination``
        owns, as a call of this silo's own, and answer its caller with the outcome.

        The caller then hears only from the silo it sent the call to, and when ``destination``
        dies or cannot be reached, this silo's deadlines and death notices fail the call
        (``SiloUnavailableError``: it may or may not have run) and the caller learns it now
        rather than at its deadline. Raises what ``Transport.send`` raises.
        """
        relayed = replace(request, call_id=next(self._ids), reply_to=self.address)
        future = self._dispatch(relayed, destination)
        where = f"{request.target}.{request.method}"

        def answer(done: asyncio.Future[Response]) -> None:
            if done.cancelled():
                return
            error = done.exception()
            if error is None:
                outcome = done.result()
                response = Response(request.call_id, outcome.ok, outcome.payload, outcome.joined)
            else:
                if isinstance(error, ClusterClosedError):  # this silo stopped meanwhile
                    error = SiloUnavailableError(
                        f"silo {self.address} stopped while {where}, forwarded to {destination}, "
                        "was in flight; it may or may not have run"
                    )
                response = Response(request.call_id, False, encode_error(error, where))
            try:
                self._transport.reply(request.reply_to, response)
            except Exception as exc:  # (the transport closing): the caller's deadline tells it
                get_logger().info("relay_failed", call=where, error=repr(exc))

        future.add_done_callback(answer)

    def fail_all(self, error: RaygrainError) -> None:
        """Fail every pending call with ``error`` (the endpoint is closing)."""
        pending, self._pending = self._pending, {}
        for future, _, _, _ in pending.values():
            if not future.done():
                future.set_exception(error)

    def fail_calls_to(
        self, silo: str, cause: str | None = None, sparing: Container[int] = ()
    ) -> int:
        """Fail the calls sent to ``silo``, which was declared dead (or, ``cause``, the
        connection they were written on broke): whether each ran is unknown, so the caller gets
        a retryable ``SiloUnavailableError`` now rather than at its deadline. The calls in
        ``sparing`` (ids of calls never written, which will be sent again) are left pending.
        Returns how many were failed."""
        cause = cause or f"silo {silo} died"
        doomed = [
            cid for cid, call in self._pending.items() if call[2] == silo and cid not in sparing
        ]
        for call_id in doomed:
            future, _, _, request = self._pending.pop(call_id)
            if not future.done():
                future.set_exception(
                    SiloUnavailableError(
                        f"{cause} while {request.target}.{request.method} was in "
                        "flight; it may or may not have run"
                    )
                )
        return len(doomed)

    def refuse_calls(self) -> None:
        """Refuse new calls (``ClusterClosedError``); those pending still get their answers."""
        self.closed = True

    def close(self) -> None:
        self.closed = True
        self.fail_all(
            ClusterClosedError(
                f"{self.address} closed while the call was pending: it may or may not have run"
            )
        )
        if self._sweeper is not None:
            self._sweeper.cancel()

    def _learn(self, target: ActorId, method: str) -> _Facts:
        # A caller that knows the class uses its per-method timeout and stateless-worker option;
        # one that does not (a thin client) still works: the silo is authoritative.
        timings = tuple(o.call_timings(target.type_name, method) for o in self._observers)
        try:
            cls = self._registry.resolve(target.type_name)
        except RaygrainError:
            return (None, False, timings)
        found = cls.__actor_methods__.get(method)
        facts = (
            found.options.timeout if found is not None else None,
            cls.__actor_options__.stateless_worker,
            timings,
        )
        if found is not None:
            # Only a real method's: a name no method has fails at the silo, and keeping it would
            # let a caller passing names on from outside grow this table without bound.
            self._facts[(target.type_name, method)] = facts
        return facts

    async def _sweep_deadlines(self) -> None:
        loop = asyncio.get_running_loop()
        while True:  # (until close() cancels it: calls refused, pending ones still time out)
            await asyncio.sleep(self._settings.deadline_resolution)
            now = loop.time()
            expired = [cid for cid, call in self._pending.items() if call[1] <= now]
            for call_id in expired:
                future, _, _, request = self._pending.pop(call_id)
                if not future.done():
                    future.set_exception(
                        ActorCallTimeout(
                            f"{request.target}.{request.method} did not complete within "
                            f"{request.timeout:g} s"
                        )
                    )


def _record(timings: tuple[CallTimings, ...], seconds: float, response: Response) -> None:
    """Give the observers' timings one call's duration (and its failure, if it failed)."""
    for timing in timings:
        pending = timing.pending
        pending.append(seconds)
        if len(pending) > FLUSH_TIMINGS_AT:
            timing.flush()
        if not response.ok:
            timing.failed(response)
