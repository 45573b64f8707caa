"""Tables for the terminal: every table the CLI prints goes through ``render_table``, with rich.

A table fits the terminal and never more than 100 columns: long cells wrap inside their column
(or end in an ellipsis where a column says so) rather than push the others out of line.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import IO, Literal

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["MAX_WIDTH", "Column", "render_table", "table_console"]

MAX_WIDTH = 100


@dataclass(frozen=True)
class Column:
    """One column: its header, which side numbers align to, and how a long cell is cut."""

    header: str
    justify: Literal["left", "right"] = "left"
    overflow: Literal["fold", "ellipsis"] = "fold"
    max_width: int | None = None
    min_width: int | None = None


def table_console(file: IO[str] | None = None) -> Console:
    """A console as wide as the terminal, at most ``MAX_WIDTH`` (100 when not a terminal)."""
    width = min(shutil.get_terminal_size((MAX_WIDTH, 24)).columns, MAX_WIDTH)
    return Console(width=width, file=file, highlight=False)


def render_table(
    columns: Sequence[Column], rows: Iterable[Sequence[object]], title: str | None = None
) -> Table:
    table = Table(
        title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False, show_edge=False
    )
    for column in columns:
        table.add_column(
            column.header,
            justify=column.justify,
            overflow=column.overflow,
            no_wrap=column.overflow == "ellipsis",
            max_width=column.max_width,
            min_width=column.min_width,
        )
    for row in rows:
        # Text, not markup: a cell such as "[1/7]" or a user's actor name is shown as it is.
        table.add_row(*(Text("-" if cell is None else str(cell)) for cell in row))
    return table
