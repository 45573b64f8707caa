"""Envelopes over Ray: batched per destination, msgpack on the wire, no head-of-line blocking.

Every message produced in one event-loop iteration for one destination goes out in a single
Ray call (``receive_batch``) carrying one msgpack blob, or several of at most
``MAX_BATCH_MESSAGES`` each: a full batch leaves at once, so that the silo works on it while
this process produces the next (with 1,000 callers that pipelining doubles the calls per
second over one batch per iteration, which leaves each side idle while the other works).
Requests and responses travel separately: a silo pushes each response as soon as its turn ends,
so a slow call never holds back the replies of fast calls that arrived in the same batch. A
driver-side client is not a Ray actor and cannot be pushed to; it long-polls each silo it talks
to for its responses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from raygrain.actors import MalformedMessageError, SiloUnavailableError, encode_error
from raygrain.runtime.kernel import (
    Endpoint,
    Request,
    Response,
    SiloEndpoint,
    get_logger,
    pack_batch,
    unpack_batch,
)
from raygrain.runtime.wire import PeerLog

__all__ = ["ClientMailbox", "RayTransport", "is_client_address"]

CLIENT_PREFIX = "client-"
POLL_SECONDS = 10.0
ANSWER_WAIT_SECONDS = 0.002  # how long a client's batch waits to carry its answers back
# Messages for one destination that go out at once, without waiting for the end of the loop
# iteration (see RayTransport._enqueue).
MAX_BATCH_MESSAGES = 250
# Answers kept for a client that does not come for them: a live client's poll takes them within
# milliseconds, so these bound only what a crashed client leaves behind.
ANSWER_TTL_SECONDS = 60.0
MAX_MAILBOX_BYTES = 64 * 1024 * 1024
SWEEP_SECONDS = 5.0  # how often a silo drops expired answers and forgotten clients' mailboxes


def is_client_address(address: str) -> bool:
    return address.startswith(CLIENT_PREFIX)


class ClientMailbox:
    """Responses waiting on a silo for a driver-side client.

    They leave by the client's long poll (``take``), or in the reply to the very batch that
    carried their calls (``take_answers``), which saves the client a Ray call per round trip.
    Calls whose batch is still waiting for its answers are reserved from the poll meanwhile.

    A client that never polls again (it crashed, or its address was never a client's) must not
    keep its answers here for ever: an answer older than ``ttl`` seconds is dropped, and so are
    the oldest ones beyond ``max_bytes`` of payload (``expire``, with a log line).
    """

    def __init__(
        self,
        ttl: float = ANSWER_TTL_SECONDS,
        max_bytes: int = MAX_MAILBOX_BYTES,
        clock: Callable[[], float] = time.monotonic,
        client: str = "",
        on_expired: Callable[[int], object] | None = None,
    ) -> None:
        self.client = client
        self._on_expired = on_expired  # told how many answers expired (a metric)
        self._entries: list[tuple[float, Response]] = []  # (arrived at, response), oldest first
        self._bytes = 0
        self._reserved: set[int] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self.ttl = ttl
        self.max_bytes = max_bytes
        self._clock = clock
        self.last_taken = clock()  # when the client last came for its answers
        self.expired = 0

    @property
    def messages(self) -> list[Response]:
        return [message for _, message in self._entries]

    def put(self, message: Response) -> None:
        self._entries.append((self._clock(), message))
        self._bytes += len(message.payload)
        if self._bytes > self.max_bytes:
            self.expire()
        if self._waiters:
            self._wake()

    def expire(self) -> int:
        """Drop the answers older than ``ttl`` and the oldest beyond ``max_bytes``; how many."""
        horizon = self._clock() - self.ttl
        dropped = 0
        while self._entries and (self._entries[0][0] < horizon or self._bytes > self.max_bytes):
            _, message = self._entries.pop(0)
            self._bytes -= len(message.payload)
            dropped += 1
        if dropped:
            self.expired += dropped
            if self._on_expired is not None:
                self._on_expired(dropped)
            get_logger().warning(
                "client_answers_expired",
                client=self.client,
                dropped=dropped,
                waiting=len(self._entries),
                reason="the client has not come for them",
            )
        return dropped

    def idle(self) -> bool:
        """Nothing waiting, and the client has not come for answers within ``ttl``."""
        return (
            not self._entries and not self._waiters and (self._clock() - self.last_taken > self.ttl)
        )

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _wait(self, deadline: float) -> bool:
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        waiter = loop.create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, remaining)
        except asyncio.TimeoutError:
            return False
        return True

    def _extract(self, call_ids: set[int], wanted: bool) -> list[Response]:
        """The responses whose call is (``wanted``) or is not in ``call_ids``; the rest stay."""
        self.last_taken = self._clock()
        taken: list[Response] = []
        kept: list[tuple[float, Response]] = []
        for entry in self._entries:
            if (entry[1].call_id in call_ids) is wanted:
                taken.append(entry[1])
                self._bytes -= len(entry[1].payload)
            else:
                kept.append(entry)
        self._entries = kept
        return taken

    async def take(self, timeout: float) -> list[Response]:
        """(The poll) every unreserved response, waiting up to ``timeout`` for one."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            taken = self._extract(self._reserved, False)
            if taken or not await self._wait(deadline):
                return taken

    async def take_answers(self, call_ids: set[int], timeout: float) -> list[Response]:
        """The responses to ``call_ids`` once all are in, or those in by ``timeout``; the
        rest go by the poll. A slow call thus delays its batch's fast ones by ``timeout`` at
        most."""
        self._reserved |= call_ids
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            while not call_ids <= {m.call_id for _, m in self._entries}:
                if not await self._wait(deadline):
                    break
            return self._extract(call_ids, True)
        finally:
            self._reserved -= call_ids
            if self._entries:
                self._wake()  # whatever stayed is the poll's


class RayTransport:
    """Transport of the endpoint ``address`` (a silo's name, or a client's id)."""

    def __init__(
        self,
        address: str,
        resolve: Callable[[str], Any],
        answer_ttl: float = ANSWER_TTL_SECONDS,
        max_mailbox_bytes: int = MAX_MAILBOX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address
        self._answer_ttl = answer_ttl
        self._max_mailbox_bytes = max_mailbox_bytes
        self._clock = clock
        self._sweeper: asyncio.Task[None] | None = None
        self._expired_in_forgotten = 0
        self._resolve = resolve  # silo name -> Ray actor handle
        self._local: Endpoint | None = None
        self._local_silo: SiloEndpoint | None = None
        self._outboxes: dict[str, list[Request | Response]] = {}
        self._flush_scheduled = False
        self._mailboxes: dict[str, ClientMailbox] = {}
        self._pollers: dict[str, asyncio.Task[None]] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self.closed = False
        self.log = PeerLog()  # (what a silo sent that this endpoint cannot take, per silo)
        self.batches_sent = 0
        self.messages_sent = 0
        self.on_batch: Callable[[int], object] | None = None  # a batch's size (metrics)
        # How many answers expired unpolled, each time some do (metrics).
        self.on_answers_expired: Callable[[int], object] | None = None

    def bind(self, endpoint: Endpoint) -> None:
        self._local = endpoint

    def bind_silo(self, silo: SiloEndpoint) -> None:
        self._local = self._local_silo = silo

    # -- Transport ---------------------------------------------------------------------------

    def send(self, destination: str, request: Request) -> None:
        if destination == self.address and self._local_silo is not None:
            self._local_silo.deliver_request(request)  # payloads are bytes: copy semantics hold
        else:
            self._enqueue(destination, request)

    def reply(self, destination: str, response: Response) -> None:
        if destination == self.address and self._local is not None:
            self._local.deliver_response(response, self.address)
        elif is_client_address(destination):
            self.mailbox(destination).put(response)  # Responses only: clients get no calls
        else:
            self._enqueue(destination, response)

    # -- silo side of client polling ---------------------------------------------------------

    def mailbox(self, client: str) -> ClientMailbox:
        box = self._mailboxes.get(client)
        if box is None:
            box = self._mailboxes[client] = ClientMailbox(
                self._answer_ttl, self._max_mailbox_bytes, self._clock, client, self._expired
            )
            if self._sweeper is None and not self.closed:
                self._sweeper = asyncio.ensure_future(self._sweep_forever())
        return box

    def _expired(self, count: int) -> None:
        if self.on_answers_expired is not None:
            self.on_answers_expired(count)

    def sweep_mailboxes(self) -> int:
        """Drop expired answers, and the mailboxes of clients gone for longer than the answers'
        lifetime; returns how many answers went."""
        dropped = 0
        for client, box in list(self._mailboxes.items()):
            dropped += box.expire()
            if box.idle():
                del self._mailboxes[client]
                self._expired_in_forgotten += box.expired
        return dropped

    async def _sweep_forever(self) -> None:
        while not self.closed:
            await asyncio.sleep(SWEEP_SECONDS)
            self.sweep_mailboxes()

    @property
    def mailboxes(self) -> int:
        return len(self._mailboxes)

    @property
    def answers_expired(self) -> int:
        """Answers dropped because their client never came for them (a metric)."""
        return self._expired_in_forgotten + sum(b.expired for b in self._mailboxes.values())

    async def poll(self, client: str) -> bytes:
        return pack_batch(await self.mailbox(client).take(POLL_SECONDS))

    async def answers(self, client: str, call_ids: set[int]) -> bytes:
        """The responses to a client's batch that are ready at once (see ClientMailbox)."""
        return pack_batch(await self.mailbox(client).take_answers(call_ids, ANSWER_WAIT_SECONDS))

    def forget_client(self, client: str) -> None:
        box = self._mailboxes.pop(client, None)
        if box is not None:
            self._expired_in_forgotten += box.expired

    # -- sending -----------------------------------------------------------------------------

    def _enqueue(self, destination: str, message: Request | Response) -> None:
        outbox = self._outboxes.get(destination)
        if outbox is None:
            outbox = self._outboxes[destination] = []
        outbox.append(message)
        if len(outbox) >= MAX_BATCH_MESSAGES:
            # Send a full batch now rather than at the end of the loop iteration: the silo
            # works on it while this process produces the next one.
            del self._outboxes[destination]
            self._send_batch(destination, outbox)
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        outboxes, self._outboxes = self._outboxes, {}
        for destination, messages in outboxes.items():
            self._send_batch(destination, messages)

    def _send_batch(self, destination: str, messages: list[Request | Response]) -> None:
        try:
            handle = self._resolve(destination)
            # Named, so that the silo takes responses in it only for calls it sent to us.
            ref = handle.receive_batch.remote(pack_batch(messages), self.address)
        except Exception as exc:
            self._undeliverable(destination, messages, exc)
            return
        self.batches_sent += 1
        self.messages_sent += len(messages)
        if self.on_batch is not None:
            self.on_batch(len(messages))
        self.ensure_polling(destination)
        watcher = asyncio.ensure_future(self._watch(ref, destination, messages))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _watch(self, ref: Any, destination: str, messages: list[Request | Response]) -> None:
        try:
            blob = await ref
        except Exception as exc:
            self._undeliverable(destination, messages, exc)
            return
        if blob:  # answers that came back with the batch
            self._take_answers(blob, destination)

    def _undeliverable(
        self, destination: str, messages: list[Request | Response], exc: BaseException
    ) -> None:
        # The batch may or may not have reached the silo before it failed: the calls' fate is
        # unknown, so each caller gets a retryable SiloUnavailableError now instead of waiting
        # for its deadline.
        # A call this silo forwarded for someone else is told to its caller, who waits for it.
        get_logger().info("batch_undeliverable", destination=destination, error=repr(exc))
        if self._local is None:
            return
        for message in messages:
            if isinstance(message, Request):
                error = SiloUnavailableError(
                    f"silo {destination} became unreachable while {message.target}."
                    f"{message.method} was in flight: {type(exc).__name__}"
                )
                failed = Response(message.call_id, False, encode_error(error, destination))
                if message.reply_to == self.address:
                    self._local.deliver_response(failed, destination)  # (on the silo's behalf)
                else:
                    self.reply(message.reply_to, failed)

    # -- client side of polling ---------------------------------------------------------------

    def ensure_polling(self, silo: str) -> None:
        """(Client only) keep a long poll open on ``silo`` for the answers to the calls we
        sent it (a call it forwarded included: it relays the new owner's answer)."""
        if is_client_address(self.address) and not self.closed and silo not in self._pollers:
            self._pollers[silo] = asyncio.ensure_future(self._poll_forever(silo))

    async def _poll_forever(self, silo: str) -> None:
        while not self.closed:
            try:
                blob = await self._resolve(silo).poll.remote(self.address)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                get_logger().info("poll_failed", silo=silo, error=repr(exc))
                self._pollers.pop(silo, None)
                return
            self._take_answers(blob, silo)

    def _take_answers(self, blob: bytes, silo: str) -> None:
        """Deliver the answers ``silo`` sent; one this endpoint cannot take (a notice whose
        body it cannot decode) is left out and logged, never ending the poll or the batch."""
        if self._local is None:
            return
        try:
            messages = unpack_batch(blob)
        except MalformedMessageError as exc:  # (a silo of another version, or a broken one)
            self.log.refused(silo, "malformed_batch", reason=str(exc))
            return
        for message in messages:
            if isinstance(message, Response):
                try:
                    self._local.deliver_response(message, silo)
                except Exception as exc:
                    self.log.refused(
                        silo, "malformed_answer", call_id=message.call_id, reason=repr(exc)
                    )

    async def aclose(self) -> None:
        self.closed = True
        sweeper = [self._sweeper] if self._sweeper is not None else []
        tasks = [*self._pollers.values(), *self._watchers, *sweeper]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pollers.clear()
