"""Idempotency keys for actor methods: do an operation once per key, however often it arrives.

A caller that cannot know whether its call ran (a lost reply, a crash, a saga step retried)
calls again with the same key. The actor keeps the keys it applied, with what it returned, in
an ``IdempotencyKeys`` field of its own state: the record commits in the same turn as the
effect (per-turn persistence), so the two are stored together or not at all. A repeated key
returns the recorded result without running the method again::

    @dataclass
    class Seats:
        booked: dict[str, str] = field(default_factory=dict)
        applied: IdempotencyKeys = field(default_factory=IdempotencyKeys)

    class Flight(Actor[Seats]):
        @idempotent                           # dedupes by the ``key`` argument
        async def book(self, key: str, traveller: str) -> str: ...

A method that raises records nothing (its turn rolls back), so a retry runs it again. The
record keeps the newest ``keep`` keys (default 10,000); a key older than that would run again.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from raygrain.actors._codec import decode, encode
from raygrain.actors._errors import ConfigurationError, InvalidArgumentsError

__all__ = ["IdempotencyKeys", "idempotent"]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


@dataclass
class IdempotencyKeys:
    """The idempotency keys an actor applied, oldest first, each with its encoded result."""

    results: dict[str, bytes] = field(default_factory=dict)
    keep: int = 10_000

    def __contains__(self, key: object) -> bool:
        return key in self.results

    def __len__(self) -> int:
        return len(self.results)

    def result(self, key: str) -> Any:
        """What the operation keyed ``key`` returned (KeyError if it never ran)."""
        data = self.results[key]
        return decode(data) if data else None

    def record(self, key: str, result: Any = None) -> None:
        """Remember ``key`` as applied with ``result``. Also the way to fence a key: a
        compensation that records the forward step's key makes a late duplicate of that step
        a no-op that returns ``result``."""
        self.results.pop(key, None)
        self.results[key] = b"" if result is None else encode(result)
        while len(self.results) > self.keep:
            del self.results[next(iter(self.results))]


@overload
def idempotent(fn: F, /) -> F: ...


@overload
def idempotent(*, key: str = "key") -> Callable[[F], F]: ...


def idempotent(fn: F | None = None, /, *, key: str = "key") -> F | Callable[[F], F]:
    """Run the method once per value of its ``key`` argument: a repeated key returns the first
    result without running it. The actor's state needs one ``IdempotencyKeys`` field."""

    def decorate(method: F) -> F:
        signature = inspect.signature(method)
        if key not in signature.parameters:
            raise ConfigurationError(
                f"{method.__qualname__}: @idempotent dedupes by the argument {key!r}, which the "
                "method does not take (name it, or pass key='...')"
            )
        parameter = signature.parameters[key]
        # Where the key is among the positional arguments (after self), when it can be one.
        position = (
            list(signature.parameters).index(key) - 1
            if parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
            else None
        )

        @functools.wraps(method)
        async def once(self: Any, *args: Any, **kwargs: Any) -> Any:
            if key in kwargs:
                value = kwargs[key]
            elif position is not None and 0 <= position < len(args):
                value = args[position]
            else:  # (a default, or a key given some other way: let the signature say)
                value = signature.bind(self, *args, **kwargs).arguments.get(key)
            if not isinstance(value, str) or not value:
                raise InvalidArgumentsError(
                    f"{method.__qualname__}: the idempotency key {key!r} must be a non-empty "
                    f"string, got {value!r}"
                )
            applied = _keys_of(self, method)
            if value in applied:
                return applied.result(value)
            result = await method(self, *args, **kwargs)
            applied.record(value, result)
            return result

        return once  # type: ignore[return-value]

    return decorate if fn is None else decorate(fn)


def _keys_of(actor: Any, method: Callable[..., Any]) -> IdempotencyKeys:
    state = getattr(actor, "state", None)
    if dataclasses.is_dataclass(state):
        for item in dataclasses.fields(state):
            found = getattr(state, item.name)
            if isinstance(found, IdempotencyKeys):
                return found
    raise ConfigurationError(
        f"{method.__qualname__}: @idempotent keeps its keys in the actor's state, which has no "
        "IdempotencyKeys field; add one: applied: IdempotencyKeys = "
        "field(default_factory=IdempotencyKeys)"
    )
