"""The ``raygrain`` command line: up, status, down, bench; and its tables (rich, 100 columns)."""

from raygrain.runtime.cli._main import main
from raygrain.runtime.cli._table import MAX_WIDTH, Column, render_table, table_console

__all__ = ["MAX_WIDTH", "Column", "main", "render_table", "table_console"]
