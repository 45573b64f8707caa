"""``WireTransport``: the kernel's ``Transport`` over direct, authenticated connections.

Outbound, one link per destination silo: it dials the address that ``locate`` finds for the
silo, and messages wait on it while it connects. Inbound, the connections that other endpoints
opened to this one's server (silos listen; clients only dial). Messages are written in batches
per connection, with backpressure (``Outboxes``). A response goes back on a connection to its
destination, our link to it or the one it opened to us: a client gets its answers on the
connections it opened, no polling.

Failures: when a connection breaks, the calls this endpoint wrote on it and has not seen
answered fail with ``SiloUnavailableError`` (their fate is unknown), and messages not yet
written wait for the reconnection, which starts at once (the endpoint's caller knows its own
calls in flight; ``InFlight`` keeps the book of those forwarded for others). A silo that cannot
be dialled: its messages go by the ``fallback`` transport (Ray) when there is one, logged once;
without one, its calls fail with ``SiloUnavailableError`` saying they were not delivered.
Failed dials are retried with exponential backoff.
"""

from __future__ import annotations

import asyncio
import enum
import random
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from raygrain.actors import MalformedMessageError, SiloUnavailableError, encode_error
from raygrain.runtime.kernel import (
    Caller,
    Endpoint,
    Malformed,
    Request,
    Response,
    Silo,
    SiloEndpoint,
    Transport,
    get_logger,
    unpack_batch,
)
from raygrain.runtime.wire._client import dial
from raygrain.runtime.wire._connection import Connection, PeerLog
from raygrain.runtime.wire._framing import ProtocolError
from raygrain.runtime.wire._in_flight import InFlight
from raygrain.runtime.wire._options import WireOptions
from raygrain.runtime.wire._outbox import MAX_BATCH_MESSAGES, Outboxes
from raygrain.runtime.wire._server import WireServer

__all__ = ["MAX_BATCH_MESSAGES", "Locate", "WireTransport"]

# Failed dials retried in the background before the link waits for the next message to try.
_BACKGROUND_DIALS = 8

Locate = Callable[[str], Awaitable[tuple[str, int] | None]]


class LinkState(enum.Enum):
    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"  # the last dial failed; the next waits for retry_at


class _Link:
    """Our connection to one destination silo, and what waits for it."""

    __slots__ = ("connection", "destination", "dials", "error", "failures", "retry_at", "state")

    def __init__(self, destination: str) -> None:
        self.destination = destination
        self.state = LinkState.DOWN
        self.connection: Connection | None = None
        self.dials: asyncio.Task[None] | None = None
        self.failures = 0
        self.retry_at = 0.0
        self.error = ""


class WireTransport:
    """Transport of the endpoint ``address`` (a silo's name, or a client's id).

    ``locate(silo)`` finds a silo's published ``(host, port)`` (None: it has none);
    ``fallback`` carries messages for silos that cannot be dialled."""

    def __init__(
        self,
        address: str,
        options: WireOptions,
        locate: Locate,
        fallback: Transport | None = None,
    ) -> None:
        self.address = address
        self.options = options
        self._locate = locate
        self._fallback = fallback
        self._local: Endpoint | None = None
        self._local_silo: SiloEndpoint | None = None
        self._caller: Caller | None = None  # the endpoint's own calls, pending
        self._links: dict[str, _Link] = {}
        self._inbound: dict[str, Connection] = {}  # the newest connection from each peer
        self._connections: set[Connection] = set()  # every live one, both ways
        self._waiting: dict[str, list[Request | Response]] = {}  # for links still connecting
        self._in_flight = InFlight(address)  # calls forwarded on our links
        self._fallen_back: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: WireServer | None = None
        self.log = PeerLog()
        self.closed = False
        self._outboxes = Outboxes(
            options, self._in_flight, self.log, self._lost, self._fail, self._spawn
        )

    def bind(self, caller: Caller) -> None:
        self._local = self._caller = caller

    def bind_silo(self, silo: Silo) -> None:
        self._local = self._local_silo = silo
        self._caller = silo.caller

    async def listen(self, host: str, port: int = 0) -> tuple[str, int]:
        """Accept connections from members on ``host`` (port 0: the OS chooses); returns the
        address to publish."""
        self._server = WireServer(self.address, self.options, self._serve, self.log)
        return await self._server.start(host, port)

    @property
    def batches_sent(self) -> int:
        return self._outboxes.batches_sent

    @property
    def messages_sent(self) -> int:
        return self._outboxes.messages_sent

    @property
    def on_batch(self) -> Callable[[int], object] | None:
        """Told each batch's size as it is written (metrics)."""
        return self._outboxes.on_batch

    @on_batch.setter
    def on_batch(self, observe: Callable[[int], object] | None) -> None:
        self._outboxes.on_batch = observe

    @property
    def cut_off(self) -> int:
        """Connections closed because their peer did not read its answers (backpressure)."""
        return self._outboxes.cut_off

    @property
    def refused(self) -> int:
        """Connections the server dropped before or during their handshake."""
        return self._server.refused if self._server is not None else 0

    # -- Transport ---------------------------------------------------------------------------

    def send(self, destination: str, request: Request) -> None:
        if destination == self.address and self._local_silo is not None:
            self._local_silo.deliver_request(request)  # payloads are bytes: copy semantics hold
            return
        link = self._links.get(destination) or self._new_link(destination)
        if link.state is LinkState.DOWN:
            if link.dials is None and asyncio.get_running_loop().time() >= link.retry_at:
                self._dial(link, 0.0)
            if self._fallback is not None:
                self._fallback.send(destination, request)
                return
            if link.state is LinkState.DOWN:
                raise SiloUnavailableError(
                    f"silo {destination} is not reachable ({link.error}); "
                    f"{request.target}.{request.method} was not delivered"
                )
        if link.state is LinkState.UP:
            assert link.connection is not None
            self._outboxes.enqueue(link.connection, request)
        elif link.failures and self._fallback is not None:
            # Redialling a silo that could not be dialled: a redial may take the whole connect
            # timeout (a firewall that drops packets), so Ray carries its calls meanwhile.
            self._fallback.send(destination, request)
        else:
            self._wait_for(link, request)

    def reply(self, destination: str, response: Response) -> None:
        if destination == self.address and self._local is not None:
            self._local.deliver_response(response, self.address)
            return
        # On the connection the call came on, when it came on one (the peer dialled us): that
        # is where the caller's book has it, so if this connection breaks, the caller knows
        # the answer may be lost. On our own link to the peer, it could be lost unnoticed.
        inbound = self._inbound.get(destination)
        if inbound is not None:
            self._outboxes.enqueue(inbound, response)
            return
        link = self._links.get(destination)
        if link is not None and link.state is LinkState.UP:
            assert link.connection is not None
            self._outboxes.enqueue(link.connection, response)
        elif link is not None and link.state is LinkState.CONNECTING and not link.failures:
            self._wait_for(link, response)
        elif self._fallback is not None:
            self._fallback.reply(destination, response)
        # else: the caller is not connected to us (gone): the response is dropped

    # -- links -------------------------------------------------------------------------------

    def connect(self, destination: str) -> None:
        """Dial ``destination`` now if no link to it exists (a client keeps one to every
        silo in the view, so that no call waits for a dial)."""
        if not self.closed and destination != self.address and destination not in self._links:
            self._new_link(destination)

    def forget(self, destination: str) -> None:
        """Close our link to ``destination`` (it left the membership) and stop redialling.

        Calls already written to it are not failed here: a silo that left gracefully has
        forwarded them, and their answers come from the new owners; for a dead silo the caller
        fails them (``Caller.fail_calls_to``)."""
        link = self._links.pop(destination, None)
        if link is None:
            return
        if link.dials is not None:
            link.dials.cancel()
        self._in_flight.forget(destination)
        for message in self._waiting.pop(destination, ()):
            if isinstance(message, Request):
                if self._fallback is not None:
                    self._resend_by_fallback(destination, message)
                else:
                    self._fail(
                        message,
                        SiloUnavailableError(
                            f"silo {destination} left; {message.target}.{message.method} "
                            "was not delivered"
                        ),
                    )
        if link.connection is not None:
            link.connection.close()

    def retain(self, destinations: Iterable[str]) -> None:
        """Forget every link but those to ``destinations`` (the silos still in the view)."""
        keep = set(destinations)
        for destination in [d for d in self._links if d not in keep]:
            self.forget(destination)

    def link_state(self, destination: str) -> LinkState | None:
        link = self._links.get(destination)
        return link.state if link is not None else None

    def drop_connections(self) -> int:
        """Close every connection at once, both ways (what a network fault does); links
        redial by themselves. Returns how many were closed."""
        connections = list(self._connections)
        for connection in connections:
            connection.close()
        return len(connections)

    def _new_link(self, destination: str) -> _Link:
        link = self._links[destination] = _Link(destination)
        self._dial(link, 0.0)
        return link

    def _wait_for(self, link: _Link, message: Request | Response) -> None:
        waiting = self._waiting.get(link.destination)
        if waiting is None:
            waiting = self._waiting[link.destination] = []
        waiting.append(message)

    def _dial(self, link: _Link, delay: float) -> None:
        if delay == 0.0:
            link.state = LinkState.CONNECTING
        task = asyncio.ensure_future(self._dial_once(link, delay))
        link.dials = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dial_once(self, link: _Link, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
            link.state = LinkState.CONNECTING
        try:
            address = await self._locate(link.destination)
            if address is None:
                raise ConnectionRefusedError("it publishes no direct address")
            connection = await dial(*address, self.address, link.destination, self.options)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            link.dials = None
            self._dial_failed(link, exc)
            return
        link.dials = None
        if self.closed or self._links.get(link.destination) is not link:
            connection.close()
            return
        link.state = LinkState.UP
        link.connection = connection
        link.failures = 0
        if link.destination in self._fallen_back:
            self._fallen_back.discard(link.destination)
            get_logger().info("wire_direct_restored", silo=link.destination)
        self._adopt(connection)
        for message in self._waiting.pop(link.destination, ()):
            self._outboxes.enqueue(connection, message)

    def _dial_failed(self, link: _Link, exc: Exception) -> None:
        if self._links.get(link.destination) is not link:
            return  # forgotten meanwhile
        link.failures += 1
        link.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        delay = min(self.options.max_backoff, self.options.backoff * 2 ** (link.failures - 1))
        delay *= random.uniform(0.5, 1.0)  # jitter: many clients do not redial in step
        link.state = LinkState.DOWN
        link.retry_at = asyncio.get_running_loop().time() + delay
        waiting = self._waiting.pop(link.destination, [])
        if self._fallback is not None and link.destination not in self._fallen_back:
            self._fallen_back.add(link.destination)
            get_logger().warning(
                "wire_unreachable_using_ray", silo=link.destination, error=link.error
            )
        for message in waiting:
            if isinstance(message, Request):
                self._resend(link.destination, message)
            elif self._fallback is not None:
                self._fallback.reply(link.destination, message)
        if not self.closed and link.failures < _BACKGROUND_DIALS:
            self._dial(link, delay)

    # -- connections -------------------------------------------------------------------------

    async def _serve(self, connection: Connection) -> None:
        """(Server) an accepted, authenticated connection: read it until it ends."""
        if self.closed:
            connection.close()
            return
        self._inbound[connection.peer] = connection
        self._connections.add(connection)
        await self._read(connection)

    def _adopt(self, connection: Connection) -> None:
        # (Counted at once, not when its reader first runs: an aclose in between cancels the
        # reader before it starts, and must still find the connection to close it.)
        self._connections.add(connection)
        self._spawn(self._read(connection))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read(self, connection: Connection) -> None:
        try:
            while True:
                self._receive(connection, await connection.receive())
        except (asyncio.IncompleteReadError, OSError):
            pass  # closed, by the peer or by us
        except Exception as exc:  # an oversized frame, bad msgpack, a bad envelope
            self.log.refused(
                connection.remote, "wire_connection_dropped", peer=connection.peer, reason=repr(exc)
            )
        finally:
            connection.close()
            self._lost(connection)

    def _receive(self, connection: Connection, blob: bytes) -> None:
        # A frame that is not a msgpack list raises (and the connection is dropped); a malformed
        # message in a good batch is left out and answered, never affecting the others.
        malformed: list[Malformed] = []
        messages = unpack_batch(blob, malformed.append)
        for bad in malformed:
            self._answer_malformed(connection, bad)
        local, silo = self._local, self._local_silo
        if local is None:
            raise ProtocolError("this endpoint is not bound")
        peer = connection.peer
        for message in messages:
            if type(message) is Request:  # (cheaper than isinstance, for every message)
                if silo is None:
                    raise ProtocolError("a request sent to a client")
                try:
                    silo.deliver_request(message)
                except Exception as exc:  # one message the silo cannot take, not the link's
                    reason = f"{message.target}.{message.method} could not be delivered: {exc!r}"
                    bad = Malformed(
                        f"malformed message: {reason}", message.call_id, message.reply_to
                    )
                    self._answer_malformed(connection, bad)
            else:
                # (The peer proved its name in the handshake: the caller checks it.)
                try:
                    local.deliver_response(message, peer)  # type: ignore[arg-type]
                except Exception as exc:  # (an answer or notice we cannot take: not the link's)
                    self.log.refused(
                        connection.remote, "wire_malformed_message", peer=peer, reason=repr(exc)
                    )

    def _answer_malformed(self, connection: Connection, bad: Malformed) -> None:
        self.log.refused(
            connection.remote, "wire_malformed_message", peer=connection.peer, reason=bad.reason
        )
        if bad.call_id is not None and bad.reply_to is not None:
            error = encode_error(MalformedMessageError(bad.reason), self.address)
            self.reply(bad.reply_to, Response(bad.call_id, False, error))

    def _lost(self, connection: Connection) -> None:
        """``connection`` ended: fail our calls written on it, keep what was not written."""
        if connection not in self._connections and not self._outboxes.holds(connection):
            return  # already handled
        self._connections.discard(connection)
        unsent = self._outboxes.take(connection)
        if self._inbound.get(connection.peer) is connection:
            del self._inbound[connection.peer]
        link = self._links.get(connection.peer)
        if link is not None and link.connection is connection:
            link.connection = None
            link.state = LinkState.DOWN
            self._fail_in_flight(connection.peer, unsent)
            if not self.closed:
                self._dial(link, 0.0)  # at once: the backoff is for dials that fail
        for message in unsent:
            if isinstance(message, Request):
                self._resend(connection.peer, message)
            elif connection.outbound:
                self.reply(connection.peer, message)
            # else: an answer on a connection its peer dialled, which fails the calls written on
            # it when it breaks: sent some other way (on Ray, a mailbox the peer may never poll),
            # it would only be held for nothing.

    def _fail_in_flight(self, destination: str, unsent: list[Request | Response]) -> None:
        """Fail the calls written on the broken link to ``destination``: our own, in our
        caller's table (those in ``unsent`` were not written: they are sent again), and those
        we forwarded for others."""
        cause = f"the connection to silo {destination} broke"
        if self._caller is not None:
            spared = {m.call_id for m in unsent if type(m) is Request}
            self._caller.fail_calls_to(destination, cause, spared)
        now = asyncio.get_running_loop().time()
        for call in self._in_flight.lost(destination, now):
            error = SiloUnavailableError(
                f"{cause} while {call.target}.{call.method} (forwarded by {self.address}) was "
                "in flight; it may or may not have run"
            )
            self._fail_call(call.call_id, call.reply_to, error)

    def _resend_by_fallback(self, destination: str, request: Request) -> None:
        assert self._fallback is not None
        try:
            self._fallback.send(destination, request)
        except SiloUnavailableError as exc:
            self._fail(request, exc)

    def _resend(self, destination: str, request: Request) -> None:
        """A request that was never written: send it again (it cannot have run)."""
        if self.closed:
            self._fail(request, SiloUnavailableError(f"{self.address} closed; not delivered"))
            return
        try:
            self.send(destination, request)
        except SiloUnavailableError as exc:
            self._fail(request, exc)

    def _fail(self, request: Request, error: Exception) -> None:
        self._fail_call(request.call_id, request.reply_to, error)

    def _fail_call(self, call_id: int, reply_to: str, error: Exception) -> None:
        # (Delivered as from this process: the call is answered here, on the silo's behalf.)
        response = Response(call_id, False, encode_error(error, self.address))
        if reply_to == self.address:
            if self._local is not None:
                self._local.deliver_response(response)
        else:
            self.reply(reply_to, response)

    async def aclose(self) -> None:
        self.closed = True
        if self._server is not None:
            await self._server.aclose()
        for link in self._links.values():
            if link.dials is not None:
                link.dials.cancel()
        for connection in list(self._connections):
            connection.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._links.clear()
        self._inbound.clear()
        self._waiting.clear()
