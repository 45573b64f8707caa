"""Transports carry envelopes between endpoints (silos and clients) named by address.

The silo never knows how a message travels: it hands requests and responses to a ``Transport``.
``LocalTransport`` delivers in-process by direct call (the messages' payloads are already encoded
bytes, so copy semantics hold); the Ray transport batches them over Ray actor calls.
"""

from __future__ import annotations

from typing import Protocol

from raygrain.actors import SiloUnavailableError
from raygrain.runtime.kernel._messages import Request, Response

__all__ = ["Endpoint", "LocalTransport", "SiloEndpoint", "Transport"]


class Endpoint(Protocol):
    """Something that receives envelopes: a silo (requests and responses) or a client
    (responses only)."""

    def deliver_response(self, response: Response, sender: str | None = None) -> None:
        """``sender``: the silo the response came from, as the transport knows it (None: from
        within this process, which ``LocalTransport`` does not tell apart)."""
        ...


class SiloEndpoint(Endpoint, Protocol):
    def deliver_request(self, request: Request) -> None: ...


class Transport(Protocol):
    def send(self, destination: str, request: Request) -> None:
        """Hand ``request`` to the silo ``destination``; raises ``SiloUnavailableError`` when it
        is known not to be there (the request was not delivered)."""
        ...

    def reply(self, destination: str, response: Response) -> None:
        """Hand ``response`` to the caller ``destination``; dropped if it is gone."""
        ...


class LocalTransport:
    """In-process delivery between endpoints registered by address."""

    def __init__(self) -> None:
        self._endpoints: dict[str, Endpoint] = {}
        self._silos: dict[str, SiloEndpoint] = {}

    def register(self, address: str, endpoint: Endpoint) -> None:
        self._endpoints[address] = endpoint

    def register_silo(self, address: str, silo: SiloEndpoint) -> None:
        self._endpoints[address] = silo
        self._silos[address] = silo

    def unregister(self, address: str) -> None:
        self._endpoints.pop(address, None)
        self._silos.pop(address, None)

    def send(self, destination: str, request: Request) -> None:
        endpoint = self._silos.get(destination)
        if endpoint is None:
            raise SiloUnavailableError(f"silo {destination!r} is not reachable")
        endpoint.deliver_request(request)

    def reply(self, destination: str, response: Response) -> None:
        endpoint = self._endpoints.get(destination)
        if endpoint is not None:
            endpoint.deliver_response(response)
