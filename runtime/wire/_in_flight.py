"""The calls a wire endpoint wrote on its links and has not seen answered.

When a link breaks, each call written on it may or may not have run, and the transport fails it
at once with ``SiloUnavailableError`` instead of letting it wait for its deadline. Two kinds:

- the endpoint's own calls, answered to it: they leave the book when their answer arrives;
- calls it forwarded for someone else (a silo passing a call to its owner by a newer view, or
  handing its queued calls over as it leaves): their answer goes from the silo that runs them
  straight to their caller, never through us, so we cannot see them end. They stay in the book
  until their deadline has passed; when the link breaks, those still within it are failed to
  their callers, and a caller whose answer came first drops the late error (it matches no
  pending call). Only forwarded calls are kept this way, and forwarding is rare (view changes,
  handovers), so the book stays small; past ``MAX_FORWARDED`` per link the oldest are dropped
  from it (they would wait for their deadline, as before this book existed).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from raygrain.actors import ActorId
from raygrain.runtime.kernel import Request, Response

__all__ = ["MAX_FORWARDED", "InFlight", "LostCall"]

# Own calls tracked past which the stale ones (long past their deadline: their silo never
# answered) are pruned.
_PRUNE_AT = 100_000
# Forwarded calls remembered per link.
MAX_FORWARDED = 100_000


@dataclass(frozen=True, slots=True)
class LostCall:
    """A call written on a link that broke before we saw it answered."""

    call_id: int
    reply_to: str
    target: ActorId
    method: str
    forwarded: bool


class InFlight:
    """The book of the endpoint ``address``: what it wrote on each link, by destination."""

    def __init__(self, address: str) -> None:
        self._address = address
        self._own: dict[int, tuple[str, Request, float]] = {}  # call id: (link, request, deadline)
        # link: (deadline, call id, caller, target, method), oldest first
        self._forwarded: dict[str, deque[tuple[float, int, str, ActorId, str]]] = {}
        # answered(call_id, None): the call's answer arrived (for every answer: a bound method
        # of the dict, not a method of ours that calls it)
        self.answered = self._own.pop

    def written(self, destination: str, messages: list[Request | Response], now: float) -> None:
        """``messages`` were written on the link to ``destination``."""
        mine = self._address
        own = self._own
        for message in messages:
            if type(message) is Request:
                if message.reply_to == mine:
                    own[message.call_id] = (destination, message, now + message.timeout)
                else:
                    self._forwarding(destination, message, now)
        if len(own) > _PRUNE_AT:
            self._prune(now)

    def lost(self, destination: str, now: float) -> list[LostCall]:
        """The link to ``destination`` broke: the calls written on it that may still be
        awaited, out of the book."""
        lost = [
            LostCall(request.call_id, request.reply_to, request.target, request.method, False)
            for _, request, _ in self._take_own(destination)
        ]
        forwarded = self._forwarded.pop(destination, ())
        lost.extend(
            LostCall(call_id, caller, target, method, True)
            for deadline, call_id, caller, target, method in forwarded
            if deadline > now
        )
        return lost

    def forget(self, destination: str) -> None:
        """``destination`` left: its calls are not failed here (see ``WireTransport.forget``)."""
        self._take_own(destination)
        self._forwarded.pop(destination, None)

    def _take_own(self, destination: str) -> list[tuple[str, Request, float]]:
        own = self._own
        ids = [call_id for call_id, (link, _, _) in own.items() if link == destination]
        return [own.pop(call_id) for call_id in ids]

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

    def _prune(self, now: float) -> None:
        stale = [cid for cid, (_, _, deadline) in self._own.items() if deadline + 60.0 < now]
        for call_id in stale:
            del self._own[call_id]
