"""Turn a URL-ish string into a storage provider: ``memory://``, ``sqlite:///path.db``, or
``python://module:factory`` for a provider of the deployment's own."""

from __future__ import annotations

import importlib

from raygrain.actors import ConfigurationError
from raygrain.storage._memory import MemoryStorage
from raygrain.storage._provider import StorageProvider
from raygrain.storage._sqlite import SqliteStorage

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
    if spec.startswith("python://"):
        return _from_factory(spec, spec[len("python://") :])
    raise ConfigurationError(
        f"unknown storage URL {spec!r}: use 'memory://', 'sqlite:///path/to/file.db' or "
        "'python://package.module:factory'"
    )


def _from_factory(spec: str, target: str) -> StorageProvider:
    # How a deployment plugs in its own provider (a network database, say) where only a string
    # can travel, as in Ray mode: the factory is imported and called with no arguments.
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
