"""The ``raygrain`` command line: up, status, down, bench."""

from raygrain.runtime.cli._main import main

__all__ = ["main"]
