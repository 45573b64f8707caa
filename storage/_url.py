"""Storage URLs, in SQLAlchemy's convention, turned into providers.

``sqlite:///rel.db`` is relative to the working directory, ``sqlite:////abs/path.db`` absolute,
``sqlite://`` and ``memory://`` keep state in memory, ``postgresql://user:pass@host:port/db`` is
a PostgreSQL database, and ``python://module:factory`` a provider of the deployment's own. The
query string carries the provider's options (``?durability=normal``), never part of a name.
A path that cannot hold a database (missing directory, unwritable) is refused here, when the
cluster is built, with one line naming it: not at the first call.
"""

from __future__ import annotations

import importlib
import os
import urllib.parse
from collections.abc import Callable
from typing import Any

from raygrain.actors import ConfigurationError
from raygrain.storage._memory import MemoryStorage
from raygrain.storage._provider import StorageProvider
from raygrain.storage._redact import redacted
from raygrain.storage._sqlite import SqliteStorage

__all__ = ["absolute_storage_url", "check_storage_url", "open_storage", "redacted"]

_EXAMPLES = (
    "use 'memory://', 'sqlite:///relative/path.db', 'sqlite:////absolute/path.db', "
    "'postgresql://user:password@host:5432/database' or 'python://package.module:factory'"
)
_POSTGRES_SCHEMES = ("postgresql", "postgres")


def open_storage(spec: str | StorageProvider) -> StorageProvider:
    """A provider for ``spec``: a provider object is returned as is; a URL is parsed (see the
    module docstring) and its provider built, not yet connected."""
    if not isinstance(spec, str):
        # (At least the state records' methods: write_many is needed by transactions only,
        # and they say so when a provider lacks it.)
        if not all(callable(getattr(spec, m, None)) for m in ("read", "write", "clear")):
            raise ConfigurationError(
                f"storage must be a URL ({_EXAMPLES}) or a provider object (read, write, "
                f"clear, ...: see StorageProvider), got {type(spec).__name__} {spec!r:.80}"
            )
        return spec
    scheme, parts = _split(spec)
    if scheme == "memory" or (scheme == "sqlite" and _sqlite_path(spec, parts) is None):
        _no_options(spec, parts)
        if scheme == "memory" and (parts.netloc or parts.path):
            raise ConfigurationError(f"storage URL {spec!r}: write 'memory://' and nothing more")
        return MemoryStorage()
    if scheme == "sqlite":
        path = _sqlite_path(spec, parts)
        assert path is not None
        _check_path(spec, path)
        return SqliteStorage(path, **_options(spec, parts, _SQLITE_OPTIONS))
    if scheme in _POSTGRES_SCHEMES:
        from raygrain.storage._postgres import (
            POSTGRES_OPTIONS,
            PostgresStorage,
            check_postgres_url,
        )

        check_postgres_url(spec)  # (before the query is taken apart and put together again)
        options = _options(spec, parts, POSTGRES_OPTIONS, pass_through=True)
        kept = [(k, v) for k, v in _query(parts) if k not in POSTGRES_OPTIONS]
        dsn = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(kept)))
        return PostgresStorage(dsn, **options)
    assert scheme == "python"
    return _from_factory(spec, spec[len("python://") :])


def check_storage_url(spec: str) -> None:
    """Raise ``ConfigurationError`` if ``spec`` is not a storage URL, names a SQLite file
    that cannot be created or written, or has options its provider refuses. Opens nothing."""
    scheme, parts = _split(spec)
    if scheme == "sqlite":
        path = _sqlite_path(spec, parts)
        if path is not None:
            _check_path(spec, path)
            _options(spec, parts, _SQLITE_OPTIONS)
    elif scheme in _POSTGRES_SCHEMES:
        open_storage(spec)  # checks the URL and its options; connects on first use only


def absolute_storage_url(spec: str) -> str:
    """``spec`` with a relative SQLite path made absolute against this process's working
    directory (Ray workers run elsewhere and would each resolve it against their own)."""
    scheme, parts = _split(spec)
    path = _sqlite_path(spec, parts) if scheme == "sqlite" else None
    if path is None or os.path.isabs(path):
        return spec
    query = f"?{parts.query}" if parts.query else ""
    return f"sqlite:///{urllib.parse.quote(_abs(path))}{query}"


# -- parsing ---------------------------------------------------------------------------------------


def _split(spec: str) -> tuple[str, urllib.parse.SplitResult]:
    try:
        parts = urllib.parse.urlsplit(spec)
    except ValueError as exc:  # ("Invalid IPv6 URL": an unclosed '[')
        raise ConfigurationError(
            f"storage URL {redacted(spec)!r} cannot be parsed: {exc}"
        ) from None
    scheme = parts.scheme.lower()
    if "://" not in spec or scheme not in ("memory", "sqlite", "python", *_POSTGRES_SCHEMES):
        raise ConfigurationError(f"unknown storage URL {redacted(spec)!r}: {_EXAMPLES}")
    return scheme, parts


def _sqlite_path(spec: str, parts: urllib.parse.SplitResult) -> str | None:
    """The file of a ``sqlite:`` URL (None: in memory). As in SQLAlchemy, the path is what
    follows the third slash: ``sqlite:///app.db`` is relative, ``sqlite:////srv/app.db``
    absolute."""
    if parts.netloc:
        # sqlite://app.db: the old spelling here, and a host to urllib. Guessing would put the
        # file somewhere the user did not mean.
        raise ConfigurationError(
            f"storage URL {spec!r} has a host ({parts.netloc!r}); a SQLite URL has none: "
            f"write 'sqlite:///{parts.netloc}{parts.path}' for a path relative to the working "
            f"directory or 'sqlite:////absolute/path.db'"
        )
    path = urllib.parse.unquote(parts.path[1:])  # drop the slash that ends the empty host
    if path in ("", ":memory:"):
        return None
    if path.endswith("/"):
        raise ConfigurationError(f"storage URL {spec!r} names a directory, not a database file")
    return path


def _query(parts: urllib.parse.SplitResult) -> list[tuple[str, str]]:
    return urllib.parse.parse_qsl(parts.query, keep_blank_values=True)


def _options(
    spec: str,
    parts: urllib.parse.SplitResult,
    known: dict[str, Callable[[str], Any]],
    *,
    pass_through: bool = False,
) -> dict[str, Any]:
    """The provider's options from the query string, converted; an unknown one is an error
    unless the URL's own driver takes it (``pass_through``: PostgreSQL's ``sslmode`` etc.)."""
    options: dict[str, Any] = {}
    for name, value in _query(parts):
        if name not in known:
            if pass_through:
                continue
            raise ConfigurationError(
                f"storage URL {redacted(spec)!r}: unknown option {name!r} "
                f"(options: {', '.join(sorted(known)) or 'none'})"
            )
        try:
            options[name] = known[name](value)
        except ValueError:
            raise ConfigurationError(
                f"storage URL {redacted(spec)!r}: option {name}={value!r} is not a valid value"
            ) from None
    return options


def _no_options(spec: str, parts: urllib.parse.SplitResult) -> None:
    if parts.query:
        raise ConfigurationError(f"storage URL {spec!r}: in-memory storage takes no options")


_SQLITE_OPTIONS: dict[str, Callable[[str], Any]] = {
    "durability": str,
    "busy_timeout": float,
    "max_batch": int,
}


def _abs(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def _check_path(spec: str, path: str) -> None:
    """Refuse a database path that SQLite could not create or write, naming it."""
    full = _abs(path)
    directory = os.path.dirname(full)
    problem = None
    if os.path.isdir(full):
        problem = "it is a directory"
    elif not os.path.exists(directory):
        problem = f"the directory {directory} does not exist"
    elif not os.path.isdir(directory):
        problem = f"{directory} is not a directory"
    elif os.path.exists(full) and not os.access(full, os.R_OK | os.W_OK):
        problem = "the file is not readable and writable by this process"
    elif not os.access(directory, os.W_OK | os.X_OK):
        # SQLite writes its -wal and -shm files beside the database, even when it exists.
        problem = f"the directory {directory} is not writable by this process"
    if problem is not None:
        raise ConfigurationError(f"storage URL {spec!r}: cannot use {full}: {problem}")


def _from_factory(spec: str, target: str) -> StorageProvider:
    # How a deployment plugs in its own provider where only a string can travel, as in Ray
    # mode: the factory is imported and called with no arguments.
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"storage URL {spec!r}: expected python://module:factory")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"storage URL {spec!r}: {exc}") from None
    provider = factory()
    if not isinstance(provider, StorageProvider):
        raise ConfigurationError(
            f"storage URL {spec!r}: {attribute}() returned {type(provider).__name__}, "
            "which does not implement the StorageProvider protocol"
        )
    return provider
