"""raygrain's structured logger: structlog over the standard ``logging`` module, quiet by default.

The runtime logs through structlog's stdlib integration into the ``logging`` logger named
``raygrain``, so an application's own handlers and levels apply (``logging.basicConfig`` or
``logging.getLogger("raygrain").setLevel(...)``), and an application's own structlog
configuration is left alone. The level comes from ``RAYGRAIN_LOG_LEVEL`` (default ``warning``)
or ``configure_logging``. Each record's message is the rendered event: JSON lines, or a console
line in a terminal. When the application has configured no logging at all (the root logger has
no handler, as in a fresh Ray worker), raygrain writes to stderr itself.

structlog is imported with the first record at an enabled level, not with raygrain: until then
``get_logger`` hands out a stand-in that asks the ``logging`` logger's level first. A quiet
process never carries structlog's modules (with rich's, some 20,000 objects that every full
garbage collection would go through: the longest pauses of a busy silo's event loop).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

__all__ = ["LOGGER_NAME", "configure_logging", "get_logger"]

LOGGER_NAME = "raygrain"
_STDLIB = logging.getLogger(LOGGER_NAME)
_logger: Any = None  # structlog's, made on the first record logged (or a test's own)
_configured = False


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
    global _configured, _logger
    stdlib = _STDLIB
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
    _configured = True
    _logger = None  # made again on the next record: the renderer follows stderr as it is then


def _structlog_logger() -> Any:
    global _logger
    if _logger is not None:
        return _logger
    import structlog

    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if sys.stderr.isatty()
        else structlog.processors.JSONRenderer()
    )
    _logger = structlog.wrap_logger(
        _STDLIB,
        wrapper_class=structlog.stdlib.BoundLogger,
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            renderer,
        ],
    )
    return _logger


def _deferred(level: int, name: str) -> Any:
    def log(self: _Deferred, event: str, **fields: Any) -> None:
        if _STDLIB.isEnabledFor(level):
            getattr(_structlog_logger(), name)(event, **fields)

    log.__name__ = log.__qualname__ = name
    return log


class _Deferred:
    """raygrain's logger until a record is at an enabled level: each method asks the
    ``logging`` logger first (as structlog's ``filter_by_level`` would), and makes the
    structlog logger only for a record that will be written."""

    __slots__ = ()

    debug = _deferred(logging.DEBUG, "debug")
    info = _deferred(logging.INFO, "info")
    warning = _deferred(logging.WARNING, "warning")
    error = _deferred(logging.ERROR, "error")
    exception = _deferred(logging.ERROR, "exception")
    critical = _deferred(logging.CRITICAL, "critical")


_DEFERRED = _Deferred()


def get_logger() -> Any:
    if _logger is not None:
        return _logger
    if not _configured:
        configure_logging()
    return _DEFERRED
