"""TLS from files, for processes that each build their own context (an ``SSLContext`` does
not pickle, so it cannot be handed to a Ray actor; file paths can)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

__all__ = ["TLSFiles"]


@dataclass(frozen=True)
class TLSFiles:
    """``certfile``/``keyfile``: what silos present (present on every node at these paths);
    ``cafile``: what clients and silos trust when they dial (None: the system's roots)."""

    certfile: str
    keyfile: str
    cafile: str | None = None

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.certfile, self.keyfile)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.cafile)
