"""The build backend: setuptools, with editable installs as a plain path entry.

setuptools maps raygrain/'s linked folders (raygrain/actors -> actors/) with an import hook in an
editable install, and static checkers such as mypy cannot follow import hooks: a user's
``mypy app.py`` would report "Cannot find implementation or library stub" for raygrain. The
compat mode puts the project root on the path instead, where raygrain/ is a plain package.
"""

from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403  (the whole PEP 517 surface, unchanged)


def build_editable(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    settings = dict(config_settings or {})
    settings.setdefault("editable_mode", "compat")
    return _setuptools.build_editable(wheel_directory, settings, metadata_directory)
