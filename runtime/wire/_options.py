"""What a wire endpoint needs: the deployment's secret, limits, timeouts, optional TLS."""

from __future__ import annotations

import secrets
import ssl
from dataclasses import dataclass

from raygrain.actors import ConfigurationError

__all__ = ["DEFAULT_MAX_FRAME_BYTES", "WireOptions", "new_secret"]

DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
DEFAULT_WRITE_BUFFER_BYTES = 1024 * 1024
SECRET_BYTES = 32


def new_secret() -> bytes:
    """A fresh per-deployment secret (256 random bits)."""
    return secrets.token_bytes(SECRET_BYTES)


@dataclass(frozen=True)
class WireOptions:
    """``secret``: shared by every member of the deployment (at least 16 bytes).
    ``server_ssl``/``client_ssl``: TLS for the listening and the dialing side (None: plain TCP).
    ``max_frame_bytes``: the largest frame accepted (and sent: larger batches are split).
    Backoff: reconnection waits ``backoff`` seconds, doubling up to ``max_backoff``.
    Backpressure: once more than ``write_buffer_bytes`` written on a connection wait for its
    peer to read them, further messages wait in the connection's backlog, up to
    ``max_backlog_bytes`` (None: ``max_frame_bytes``; the backlog always takes one message).
    ``max_handshakes``: connections a silo holds in their handshake (TLS included) at once;
    a newer one pushes the oldest out, so that dialers who never finish cannot take every
    file descriptor (None: a quarter of the process's descriptor limit, 64 to 16,384).
    ``keepalive``: seconds a connection may be idle before TCP probes its peer (three probes,
    ``keepalive / 2`` apart), so that a peer gone without a word (its machine lost, a NAT
    that forgot the connection) is noticed, and an idle NAT entry is kept."""

    secret: bytes
    server_ssl: ssl.SSLContext | None = None
    client_ssl: ssl.SSLContext | None = None
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    handshake_timeout: float = 5.0
    connect_timeout: float = 5.0
    backoff: float = 0.05
    max_backoff: float = 5.0
    write_buffer_bytes: int = DEFAULT_WRITE_BUFFER_BYTES
    max_backlog_bytes: int | None = None
    max_handshakes: int | None = None
    keepalive: float = 10.0

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) < 16:
            raise ConfigurationError("the wire secret must be at least 16 bytes")
        if not isinstance(self.max_frame_bytes, int) or self.max_frame_bytes < 1024:
            raise ConfigurationError(
                f"max_frame_bytes must be an int >= 1024, got {self.max_frame_bytes!r}"
            )
        sizes = (
            ("write_buffer_bytes", self.write_buffer_bytes),
            ("max_backlog_bytes", self.backlog_limit),
        )
        for label, value in sizes:
            if type(value) is not int or value < 1024:
                raise ConfigurationError(f"{label} must be an int >= 1024, got {value!r}")
        if self.max_handshakes is not None and (
            type(self.max_handshakes) is not int or self.max_handshakes < 1
        ):
            raise ConfigurationError(
                f"max_handshakes must be an int >= 1, got {self.max_handshakes!r}"
            )
        if not isinstance(self.keepalive, (int, float)) or not 1 <= self.keepalive <= 3600:
            raise ConfigurationError(
                f"keepalive must be a number of seconds from 1 to 3600, got {self.keepalive!r}"
            )
        for label in ("server_ssl", "client_ssl"):
            value = getattr(self, label)
            if value is not None and not isinstance(value, ssl.SSLContext):
                raise ConfigurationError(
                    f"{label} must be an ssl.SSLContext or None, got {type(value).__name__}"
                )

    def __repr__(self) -> str:  # never print the secret
        return f"WireOptions(max_frame_bytes={self.max_frame_bytes}, tls={self.tls})"

    @property
    def backlog_limit(self) -> int:
        if self.max_backlog_bytes is None:
            return self.max_frame_bytes
        return self.max_backlog_bytes

    @property
    def handshake_limit(self) -> int:
        if self.max_handshakes is None:
            return _quarter_of_descriptors()
        return self.max_handshakes

    @property
    def tls(self) -> bool:
        return self.server_ssl is not None or self.client_ssl is not None


def _quarter_of_descriptors() -> int:
    # (A burst of members dialling at once, thousands of clients after a network fault, is
    # let in whole where descriptors allow; the other three quarters stay for everything else.)
    try:
        import resource
    except ImportError:  # (not on Windows)
        return 512
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 16_384
    return max(64, min(16_384, soft // 4))
