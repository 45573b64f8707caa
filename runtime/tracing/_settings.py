"""Tracing settings: a value object given to the silos in ``SiloOptions.capabilities``."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from raygrain.actors import ConfigurationError

__all__ = ["TracingSettings", "run_setup"]


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """``setup``: ``"module:function"``, called once in every process that hosts silos before
    they serve (on Ray: each silo actor's process), to configure OpenTelemetry there (a
    ``TracerProvider`` and its exporter), the way Ray's ``worker_process_setup_hook`` does.
    None: the process's OpenTelemetry configuration is used as it is."""

    setup: str | None = None

    def __post_init__(self) -> None:
        setup = self.setup
        if setup is not None and (
            not isinstance(setup, str) or not all(setup.partition(":")[::2]) or ":" not in setup
        ):
            raise ConfigurationError(
                f"TracingSettings.setup must be 'module:function' or None, got {setup!r}"
            )


_DONE: set[str] = set()


def run_setup(setup: str) -> None:
    """Call ``setup`` (``"module:function"``) unless this process already did."""
    if setup in _DONE:
        return
    module_name, _, function_name = setup.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationError(
            f"tracing setup {setup!r} is not an importable 'module:function': {exc}"
        ) from None
    function()
    _DONE.add(setup)
