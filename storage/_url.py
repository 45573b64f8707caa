"""Turn a URL-ish string into a storage provider: ``memory://`` or ``sqlite:///path.db``."""

from __future__ import annotations

from actors import ConfigurationError
from storage._memory import MemoryStorage
from storage._provider import StorageProvider
from storage._sqlite import SqliteStorage

__all__ = ["open_storage"]


def open_storage(spec: str | StorageProvider) -> StorageProvider:
    """A provider for ``spec``: a provider is returned as is; ``memory://`` gives a
    ``MemoryStorage``; ``sqlite:///abs/path.db`` or ``sqlite://rel/path.db`` a ``SqliteStorage``."""
    if not isinstance(spec, str):
        return spec
    if spec == "memory://":
        return MemoryStorage()
    if spec.startswith("sqlite://"):
        path = spec[len("sqlite://") :]
        # sqlite:///abs/path keeps its leading slash; sqlite://rel/path is relative.
        if not path or path == "/":
            raise ConfigurationError(f"storage URL {spec!r} names no database file")
        return SqliteStorage(path)
    raise ConfigurationError(
        f"unknown storage URL {spec!r}: use 'memory://' or 'sqlite:///path/to/file.db'"
    )
