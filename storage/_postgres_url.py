"""Checks of a PostgreSQL storage URL made before anything connects: what asyncpg would misread,
or refuse at each connection attempt (which looked like an unreachable server), is refused at
once, in words that never show the password."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from typing import Any

from raygrain.actors import ConfigurationError
from raygrain.storage._postgres_errors import safe

__all__ = ["POSTGRES_OPTIONS", "check_postgres_url", "check_ssl_mode"]

# Option name -> converter, as the storage URL's query string gives them.
POSTGRES_OPTIONS: dict[str, Callable[[str], Any]] = {
    "pool_size": int,
    "statement_timeout": float,
    "connect_timeout": float,
    "read_timeout": float,
    "max_batch": int,
    "pipelines": int,
    "schema": str,
}

# libpq's sslmode values, which asyncpg takes too.
_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def check_postgres_url(dsn: str) -> None:
    """Refuse a URL that asyncpg would misread (or fail on at first use with a ValueError
    quoting part of it), in words that never show the password."""
    parts = urllib.parse.urlsplit(dsn)
    unencoded = ConfigurationError(
        f"PostgresStorage URL {safe(dsn)!r}: a '/', '?' or '#' in the user name or password "
        "must be percent-encoded (urllib.parse.quote(password, safe=''))"
    )
    rest = dsn.partition("://")[2]
    if "@" in rest and "@" not in parts.netloc and "@" not in parts.query + parts.fragment:
        raise unencoded  # the '@' that ends the password landed in the path
    for host in parts.netloc.rpartition("@")[2].split(","):
        port = host.partition("]")[2] if host.startswith("[") else host
        port = port.rpartition(":")[2] if ":" in port else ""
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            if "@" not in parts.netloc and "@" in rest:
                raise unencoded  # what urllib takes for a port is part of the password
            raise ConfigurationError(
                f"PostgresStorage URL {safe(dsn)!r}: the port {port!r} is not a number "
                "from 1 to 65535"
            )


def check_ssl_mode(dsn: str) -> None:
    """Refuse an ``sslmode`` no server could accept (asyncpg would refuse it at each connection
    attempt, which looked like an unreachable server)."""
    for name, value in urllib.parse.parse_qsl(urllib.parse.urlsplit(dsn).query):
        if name == "sslmode" and value not in _SSL_MODES:
            raise ConfigurationError(
                f"PostgresStorage URL {safe(dsn)!r}: sslmode={value!r} is not one of "
                f"{', '.join(_SSL_MODES)}"
            )
