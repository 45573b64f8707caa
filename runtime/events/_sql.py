"""``Sql``: the statements one batch of a ``SqlProjection`` runs on the user's own tables."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from raygrain.actors import ConfigurationError
from raygrain.storage import SqlStep

__all__ = ["Sql"]


class Sql:
    """The work one batch of events does on the user's own tables: ``sql.execute(statement,
    *parameters)`` records a statement, ``sql.run(function)`` a function given the store's
    own connection. They run in order, in the transaction that commits the batch's offsets,
    when the whole batch has been handled. Parameters are in the store's dialect,
    ``sql.dialect``: ``"sqlite"`` (``?``) or ``"postgresql"`` (``$1``)."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        self.statements: list[SqlStep] = []

    def execute(self, statement: str, *parameters: Any) -> None:
        if not isinstance(statement, str) or not statement.strip():
            raise ConfigurationError(f"a SQL statement is a non-empty str, got {statement!r}")
        self.statements.append((statement, parameters))

    def run(self, function: Callable[[Any], Any]) -> None:
        """Call ``function(connection)`` inside the commit's transaction, after the steps
        recorded before it: it can read what they wrote and write what it likes. SQLite: a
        plain function of the ``sqlite3.Connection``, called on the store's writer thread
        (keep it short: the writer waits for it). PostgreSQL: a function of the
        ``asyncpg.Connection``, usually ``async``. What it raises rolls the whole batch back,
        offsets included, and the batch is tried again."""
        if not callable(function):
            raise ConfigurationError(
                f"sql.run takes a function of the connection, got {function!r}"
            )
        if self.dialect == "sqlite" and inspect.iscoroutinefunction(function):
            raise ConfigurationError(
                f"sql.run({getattr(function, '__qualname__', function)}): on SQLite the "
                "function runs on the writer's thread and is a plain def, not async def"
            )
        self.statements.append(function)
