"""The calls a wire endpoint forwarded for others on its links and cannot see answered.

When a link breaks, each call written on it may or may not have run, and the transport fails it
at once with ``SiloUnavailableError`` instead of letting it wait for its deadline. The
endpoint's own calls need no book here: its caller's table of pending calls knows where each
went (``Caller.fail_calls_to``), and the transport spares the ones it had not written yet.

Calls it forwarded for someone else (a silo passing a call to its owner by a newer view, or
handing its queued calls over as it leaves) are in no table of ours: their answer goes from the
silo that runs them straight to their caller, never through us, so we cannot see them end.
They stay in this book until their deadline has passed; when the link breaks, those still
within it are failed to their callers, and a caller whose answer came first drops the late
error (it matches no pending call). Forwarding is rare (view changes, handovers), so the book
stays small; past ``MAX_FORWARDED`` per link the oldest are dropped from it (they would wait
for their deadline, as before this book existed).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from raygrain.actors import ActorId
from raygrain.runtime.kernel import Request, Response

__all__ = ["MAX_FORWARDED", "InFlight", "LostCall"]

# Forwarded calls remembered per link.
MAX_FORWARDED = 100_000


@dataclass(frozen=True, slots=True)
class LostCall:
    """A forwarded call written on a link that broke before its deadline."""

    call_id: int
    reply_to: str
    target: ActorId
    method: str


class InFlight:
    """The book of the endpoint ``address``: what it forwarded on each link, by destination."""

    def __init__(self, address: str) -> None:
        self._address = address
        # link: (deadline, call id, caller, target, method), oldest first
        self._forwarded: dict[str, deque[tuple[float, int, str, ActorId, str]]] = {}

    def written(self, destination: str, messages: list[Request | Response], now: float) -> None:
        """``messages`` were written on the link to ``destination``."""
        mine = self._address
        for message in messages:
            # (Every message written on a link passes here: one test for the usual ones.)
            if type(message) is Request and message.reply_to != mine:
                self._forwarding(destination, message, now)

    def lost(self, destination: str, now: float) -> list[LostCall]:
        """The link to ``destination`` broke: the forwarded calls written on it that may still
        be awaited, out of the book."""
        return [
            LostCall(call_id, caller, target, method)
            for deadline, call_id, caller, target, method in self._forwarded.pop(destination, ())
            if deadline > now
        ]

    def forget(self, destination: str) -> None:
        """``destination`` left: its calls are not failed here (see ``WireTransport.forget``)."""
        self._forwarded.pop(destination, None)

    def _forwarding(self, destination: str, request: Request, now: float) -> None:
        book = self._forwarded.get(destination)
        if book is None:
            book = self._forwarded[destination] = deque()
        # Deadlines are the callers' timeouts from when we got the call: nearly in order, so
        # the expired ones are at the front.
        while book and (book[0][0] <= now or len(book) >= MAX_FORWARDED):
            book.popleft()
        deadline = now + request.timeout
        book.append((deadline, request.call_id, request.reply_to, request.target, request.method))
