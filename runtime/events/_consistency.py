"""The tokens of the consistency levels a query can ask for.

- ``Written``: what a command's events produced (their stream version and their position in
  the category's feed). Given to a query, the query waits until the read model has applied
  that position: read-your-writes.
- ``ReadResult``: a read model's answer, with the positions the read model had applied.
- ``Session``: a client's own high-water marks; every read through it asks for at least what
  the session has seen, so a later read never shows an older state (monotonic reads), and it
  also remembers its own writes (read-your-writes for everything written through it).

Positions are per category; a token is a map category -> position, merged by maximum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from raygrain.actors import InvalidArgumentsError, InvalidCallError

__all__ = ["ReadResult", "Session", "Token", "Written", "as_token", "merge", "wait_seconds"]

Token = dict[str, int]


@dataclass(frozen=True)
class Written:
    """Where a command's events went: ``stream`` at ``version``, ``category`` at ``position``
    (the last of them)."""

    stream: str
    version: int
    category: str
    position: int

    def token(self) -> Token:
        return {self.category: self.position}


@dataclass(frozen=True)
class ReadResult:
    """A value read from a read model, and the positions it reflects (category -> position)."""

    value: Any
    positions: dict[str, int] = field(default_factory=dict)


def merge(into: Token, other: Mapping[str, int]) -> None:
    for category, position in other.items():
        if position > into.get(category, 0):
            into[category] = position


def as_token(after: Written | Mapping[str, int] | None) -> Token:
    if after is None:
        return {}
    if isinstance(after, Written):
        if not isinstance(after.category, str) or not _is_position(after.position):
            raise InvalidCallError(
                f"a read's `after` Written token names no category and position: {after!r:.120}"
            )
        return after.token()
    if not isinstance(after, Mapping) or not all(
        isinstance(k, str) and _is_position(v) for k, v in after.items()
    ):
        raise InvalidCallError(
            "a read's `after` is a Written token (what a command returned) or a "
            f"mapping of category -> position; got {type(after).__name__} {after!r:.80}"
        )
    return dict(after)


def _is_position(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def wait_seconds(timeout: object) -> float:
    """A read's ``timeout``: a finite number of seconds >= 0 (0: answer only if caught up
    already). Refused with a typed error otherwise: NaN or infinity would wait for ever."""
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not 0 <= timeout < math.inf
    ):
        raise InvalidArgumentsError(
            f"a read's timeout is a finite number of seconds >= 0, got {timeout!r:.80}"
        )
    return float(timeout)


class _Readable(Protocol):
    async def read(self, key: Any, after: Token | None = None) -> ReadResult: ...


class Session:
    """A client's session for monotonic reads (and read-your-writes across its commands).

    ``await session.read(read_model, key)`` reads no older than anything the session has seen
    or written; ``session.wrote(written)`` adds a command's token. Costs a wait only when the
    read model is behind what the session already saw."""

    def __init__(self) -> None:
        self.token: Token = {}

    def wrote(self, written: Written) -> Written:
        if not isinstance(written, Written):
            raise InvalidCallError(
                "Session.wrote takes the Written token a command returned, got "
                f"{type(written).__name__} {written!r:.80}"
            )
        merge(self.token, as_token(written))
        return written

    def saw(self, result: ReadResult) -> ReadResult:
        merge(self.token, result.positions)
        return result

    async def read(self, read_model: Any, key: Any) -> ReadResult:
        read = getattr(read_model, "read", None)
        if not callable(read):
            raise InvalidCallError(
                "Session.read reads through a projection's reference (Projection.of(cluster)), "
                f"got {type(read_model).__name__} {read_model!r:.80}"
            )
        target: _Readable = read_model
        return self.saw(await target.read(key, dict(self.token)))
