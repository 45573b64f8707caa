"""raygrain's structured logger: structlog, quiet by default.

The runtime logs activations, deactivations and errors through one private structlog logger, so
an application's own structlog configuration is left alone. The level comes from
``RAYGRAIN_LOG_LEVEL`` (default ``warning``) or ``configure_logging``; output is a console
renderer in a terminal and JSON lines otherwise, on stderr.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

__all__ = ["configure_logging", "get_logger"]

_logger: Any = None


def configure_logging(level: str | int | None = None) -> None:
    """Set raygrain's log level (``"debug"``, ``"info"``, ``"warning"``, ...)."""
    global _logger
    chosen = level if level is not None else os.environ.get("RAYGRAIN_LOG_LEVEL", "warning")
    numeric = chosen if isinstance(chosen, int) else logging.getLevelName(str(chosen).upper())
    if not isinstance(numeric, int):
        numeric = logging.WARNING
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if sys.stderr.isatty()
        else structlog.processors.JSONRenderer()
    )
    _logger = structlog.wrap_logger(
        structlog.PrintLogger(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            renderer,
        ],
        logger_name="raygrain",
    )


def get_logger() -> Any:
    if _logger is None:
        configure_logging()
    return _logger
