"""raygrain's structured logger: structlog over the standard ``logging`` module, quiet by default.

The runtime logs through structlog's stdlib integration into the ``logging`` logger named
``raygrain``, so an application's own handlers and levels apply (``logging.basicConfig`` or
``logging.getLogger("raygrain").setLevel(...)``), and an application's own structlog
configuration is left alone. The level comes from ``RAYGRAIN_LOG_LEVEL`` (default ``warning``)
or ``configure_logging``. Each record's message is the rendered event: JSON lines, or a console
line in a terminal. When the application has configured no logging at all (the root logger has
no handler, as in a fresh Ray worker), raygrain writes to stderr itself.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

__all__ = ["LOGGER_NAME", "configure_logging", "get_logger"]

LOGGER_NAME = "raygrain"
_logger: Any = None


class _FallbackHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr, but only while the application has configured no logging of its own."""

    def emit(self, record: logging.LogRecord) -> None:
        if not logging.getLogger().handlers:
            self.stream = sys.stderr  # whatever stderr is now (it may have been replaced)
            super().emit(record)


def configure_logging(level: str | int | None = None) -> None:
    """Set raygrain's log level (``"debug"``, ``"info"``, ``"warning"``, ...).

    Without ``level``: ``RAYGRAIN_LOG_LEVEL``, else whatever level the ``raygrain`` logger
    already has, else ``warning``.
    """
    global _logger
    stdlib = logging.getLogger(LOGGER_NAME)
    chosen = level if level is not None else os.environ.get("RAYGRAIN_LOG_LEVEL")
    if chosen is not None or stdlib.level == logging.NOTSET:
        numeric = (
            chosen
            if isinstance(chosen, int)
            else logging.getLevelName(str(chosen or "warning").upper())
        )
        stdlib.setLevel(numeric if isinstance(numeric, int) else logging.WARNING)
    if not any(isinstance(h, _FallbackHandler) for h in stdlib.handlers):
        stdlib.addHandler(_FallbackHandler())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if sys.stderr.isatty()
        else structlog.processors.JSONRenderer()
    )
    _logger = structlog.wrap_logger(
        stdlib,
        wrapper_class=structlog.stdlib.BoundLogger,
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            renderer,
        ],
    )


def get_logger() -> Any:
    if _logger is None:
        configure_logging()
    return _logger
