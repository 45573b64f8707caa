"""The installed raygrain's version, read when first asked for.

importlib.metadata (with email, zipfile, csv...) is imported then, not with raygrain: its
modules are thousands of objects that every full garbage collection of the process would go
through.
"""

from __future__ import annotations

import functools

__all__ = ["installed_version"]


@functools.cache
def installed_version() -> str:
    """The version of the installed distribution, ``0+unknown`` in a source tree that was never
    installed."""
    from importlib import metadata

    try:
        return metadata.version("raygrain")
    except metadata.PackageNotFoundError:
        return "0+unknown"
