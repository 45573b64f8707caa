"""TLS from files, for processes that each build their own context (an ``SSLContext`` does
not pickle, so it cannot be handed to a Ray actor; file paths can)."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass

from raygrain.actors import ConfigurationError

__all__ = ["TLSFiles"]


@dataclass(frozen=True)
class TLSFiles:
    """``certfile``/``keyfile``: what silos present (present on every node at these paths);
    ``cafile``: what clients and silos trust when they dial (None: the system's roots)."""

    certfile: str
    keyfile: str
    cafile: str | None = None

    def check(self) -> None:
        """Load the files here (the launching node; a silo loads them again on its own):
        a ``ConfigurationError`` naming the file that is missing or unusable, rather than a
        deployment whose silos all fail to start."""
        for label, path in (("certificate", self.certfile), ("key", self.keyfile)):
            if not os.path.isfile(path):
                raise ConfigurationError(f"TLS {label} file {path!r}: no such file")
        if self.cafile is not None and not os.path.isfile(self.cafile):
            raise ConfigurationError(f"TLS CA file {self.cafile!r}: no such file")
        self.server_context()
        self.client_context()

    def server_context(self) -> ssl.SSLContext:
        """What a silo presents; ``ConfigurationError`` naming the files if they are missing or
        unusable on this machine."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.certfile, self.keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"TLS certificate {self.certfile!r} and key {self.keyfile!r} on this machine: "
                f"unusable: {exc}"
            ) from None
        return context

    def client_context(self) -> ssl.SSLContext:
        """What a dialer (a client, a silo calling another) trusts; it needs no key."""
        try:
            return ssl.create_default_context(cafile=self.cafile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"TLS CA file {self.cafile!r} on this machine: unusable: {exc}"
            ) from None
