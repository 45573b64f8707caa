"""The sending side of the wire: batches per connection, frames, and backpressure.

Every message for one connection produced in one event-loop iteration travels in one frame
(a kernel ``pack_batch``), or several once ``MAX_BATCH_MESSAGES`` are waiting, so that the
receiver works on one while the sender produces the next; a batch over the frame cap is split.

Backpressure: a frame is handed to the socket at once while the peer keeps up. Once more than
``write_buffer_bytes`` wait for it to read, what follows waits in the connection's backlog
(unwritten, so it can still go elsewhere if the connection breaks) until the socket drains.
The backlog is capped at ``max_backlog_bytes``: past it a request is refused with
``ActorOverloadedError`` (not sent; the caller may retry), and an answer closes the connection,
since a peer that does not read its answers must not grow our memory without bound (its calls
then fail as on any broken connection, and it redials). Reading never stops: a side that
stopped reading while it cannot write could deadlock with a peer doing the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from raygrain.actors import ActorOverloadedError, MessageTooLargeError, encode_error
from raygrain.runtime.kernel import Request, Response, get_logger, pack_batch
from raygrain.runtime.wire._connection import Connection, PeerLog
from raygrain.runtime.wire._in_flight import InFlight
from raygrain.runtime.wire._options import WireOptions

__all__ = ["MAX_BATCH_MESSAGES", "Outboxes"]

# Messages for one connection that leave at once, without waiting for the end of the loop
# iteration (as RayTransport's batches).
MAX_BATCH_MESSAGES = 250

Message = Request | Response


class Outboxes:
    """What one endpoint has to write, per connection.

    ``lost(connection)``: the transport's handling of a connection that ended (re-routes what
    ``take`` returns); ``fail(request, error)``: answer a request that was not sent;
    ``spawn``: run a background task the transport owns."""

    def __init__(
        self,
        options: WireOptions,
        in_flight: InFlight,
        log: PeerLog,
        lost: Callable[[Connection], None],
        fail: Callable[[Request, Exception], None],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self._options = options
        self._in_flight = in_flight
        self._log = log
        self._lost = lost
        self._fail = fail
        self._spawn = spawn
        self._boxes: dict[Connection, list[Message]] = {}
        self._flush_scheduled = False
        self.batches_sent = 0
        self.messages_sent = 0
        self.cut_off = 0  # connections closed because the peer did not read its answers
        self.on_batch: Callable[[int], object] | None = None  # a batch's size (metrics)

    def enqueue(self, connection: Connection, message: Message) -> None:
        box = self._boxes.get(connection)
        if box is None:
            box = self._boxes[connection] = []
        box.append(message)
        if len(box) >= MAX_BATCH_MESSAGES:
            del self._boxes[connection]
            self._write(connection, box)
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def holds(self, connection: Connection) -> bool:
        return connection in self._boxes

    def take(self, connection: Connection) -> list[Message]:
        """Everything not yet written on ``connection`` (which ended), out of the boxes."""
        unsent = self._boxes.pop(connection, [])
        unsent.extend(connection.take_backlog())
        return unsent

    def _flush(self) -> None:
        self._flush_scheduled = False
        boxes, self._boxes = self._boxes, {}
        for connection, messages in boxes.items():
            self._write(connection, messages)

    def _write(self, connection: Connection, messages: list[Message]) -> None:
        if connection.closed:
            self._boxes.setdefault(connection, []).extend(messages)
            self._lost(connection)
            return
        if connection.backlog is not None:
            self._hold(connection, messages)
            return
        blob = pack_batch(messages)
        if len(blob) > self._options.max_frame_bytes:
            if len(messages) > 1:
                half = len(messages) // 2
                self._write(connection, messages[:half])
                self._write(connection, messages[half:])
            else:
                self._too_large(connection, messages[0], len(blob))
            return
        if connection.outbound:
            self._in_flight.written(connection.peer, messages, asyncio.get_running_loop().time())
        connection.send(blob)
        self.batches_sent += 1
        self.messages_sent += len(messages)
        if self.on_batch is not None:
            self.on_batch(len(messages))
        if connection.congested():  # the peer reads slower than we write: hold what follows
            connection.backlog = []
            self._spawn(self._drain(connection))

    def _hold(self, connection: Connection, messages: list[Message]) -> None:
        limit = self._options.backlog_limit
        refused = connection.hold(messages, limit)
        if not refused:
            return
        if any(type(message) is Response for message in refused):
            self._log.refused(
                connection.remote,
                "wire_peer_not_reading",
                peer=connection.peer,
                backlog_bytes=connection.backlog_bytes,
            )
            self.cut_off += 1
            assert connection.backlog is not None
            connection.backlog.extend(refused)  # re-routed with the rest as the connection ends
            connection.close()
            self._lost(connection)
            return
        for message in refused:
            assert type(message) is Request
            self._fail(
                message,
                ActorOverloadedError(
                    f"silo {connection.peer} is not reading fast enough: "
                    f"{connection.backlog_bytes} bytes wait for it (max_backlog_bytes={limit}); "
                    f"{message.target}.{message.method} was not sent"
                ),
            )

    async def _drain(self, connection: Connection) -> None:
        try:
            await connection.drained()
        except Exception:  # it broke: the connection's reader re-routes the rest
            return
        if connection.closed:
            return
        held = connection.take_backlog()
        for start in range(0, len(held), MAX_BATCH_MESSAGES):
            self._write(connection, held[start : start + MAX_BATCH_MESSAGES])

    def _too_large(self, connection: Connection, message: Message, size: int) -> None:
        error = MessageTooLargeError(
            f"a message of {size} bytes is over the wire's {self._options.max_frame_bytes}-byte "
            "frame limit (max_frame_bytes)"
        )
        if isinstance(message, Request):
            self._fail(message, error)
            return
        # An answer: its caller is told why, rather than left waiting for its deadline. (Not
        # an observer notice, call id < 0: no caller waits on it, and an error record in its
        # place would only be refused by the observers' endpoint as a malformed notice.)
        payload = encode_error(error, f"answer to {connection.peer}")
        answer = Response(message.call_id, False, payload)
        # (Smaller, so this ends however small the cap.)
        if message.call_id >= 0 and len(answer.payload) < len(message.payload):
            self._write(connection, [answer])
        else:
            get_logger().warning("wire_response_too_large", call_id=message.call_id, size=size)
