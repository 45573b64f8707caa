"""The aiosqlite plumbing of ``SqliteStorage``: running a function on a connection's own thread
(the one bridge from the event loop to sqlite3), closing a connection that has nothing left to
lose, and SQLite's errors in words a user can act on."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

import aiosqlite

__all__ = ["close_quietly", "is_locked", "on_thread", "reason"]

_T = TypeVar("_T")

# SQLite primary result codes (sqlite3 only exports them as constants from Python 3.11 on).
_BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 5, 6, 8, 10, 11, 13, 14, 26
_TOOBIG = 18


async def on_thread(
    connection: aiosqlite.Connection, function: Callable[[sqlite3.Connection], _T]
) -> _T:
    """Run ``function`` with ``connection``'s sqlite3 connection on its own thread.

    (``_execute`` is how every aiosqlite method reaches that thread; it has no public name.)
    """
    execute = cast(Callable[[Callable[[], _T]], Awaitable[_T]], connection._execute)
    return await execute(lambda: function(connection._conn))


def is_locked(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` says another connection holds the lock (busy or locked)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return (code is not None and code & 0xFF in (_BUSY, _LOCKED)) or "locked" in str(exc)


def reason(exc: sqlite3.Error, busy_timeout: float) -> str:
    """What went wrong, in words a user can act on."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF
    if is_locked(exc):
        return (
            f"the database is locked by another connection "
            f"(waited busy_timeout={busy_timeout:g}s) [{exc}]"
        )
    if primary == _NOTADB:
        return f"not a SQLite database (corrupt, or another kind of file) [{exc}]"
    if primary == _CORRUPT:
        return f"the database file is corrupt [{exc}]"
    if primary == _CANTOPEN:
        return f"cannot open the file: does its directory exist and is it writable? [{exc}]"
    if primary == _READONLY:
        return f"the file or its directory is read-only [{exc}]"
    if primary == _TOOBIG:
        return (
            "the record is too big for SQLite (a row holds at most SQLITE_LIMIT_LENGTH bytes, "
            f"1 GB by default) [{exc}]"
        )
    if primary == _FULL:
        return f"the disk is full [{exc}]"
    if primary == _IOERR:
        return f"disk I/O error [{exc}]"
    return str(exc)


async def close_quietly(connection: aiosqlite.Connection) -> None:
    # Nothing is left to lose: every write was committed or rolled back before closing.
    with contextlib.suppress(sqlite3.Error, ValueError):
        await connection.close()
