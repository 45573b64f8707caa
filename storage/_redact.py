"""Storage URLs as messages may show them: the password hidden (``redacted``).

Its own module, importing nothing of the storage package, so that the URL parser and the
PostgreSQL provider's error messages both use it without importing each other.
"""

from __future__ import annotations

import re
import urllib.parse

__all__ = ["redacted"]

# A ``key=value`` setting (a libpq key/value string, a URL's query option): its value is hidden
# when the key is ``password``, however it is spelt (asyncpg reads ``passwor%64`` as it).
_SETTING = re.compile(r"([^\s&?;=]+)(\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]*)")


def _hide_password(setting: re.Match[str]) -> str:
    key, equals, _ = setting.groups()
    if urllib.parse.unquote(key).strip().lower() == "password":
        return f"{key}{equals}***"
    return setting.group(0)


def redacted(spec: str) -> str:
    """``spec`` for a message: a URL's password shown as ``***`` (everything between the user
    name's ':' and the last '@', so that a '/', '?' or '#' left unencoded in it cannot split it),
    and so is any ``password=`` setting (a libpq key/value string, a query option)."""
    spec = _SETTING.sub(_hide_password, spec)
    scheme, separator, rest = spec.partition("://")
    if not separator or "@" not in rest or scheme.lower() == "sqlite":
        return spec
    userinfo, _, host = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}"
