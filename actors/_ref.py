"""Actor references: cheap, serializable values that name an actor and call it.

A reference holds only an ``ActorId``. It is bound to the runtime that made it (a cluster
client or a silo); a reference that arrived by message or from stored state is unbound and
uses the runtime of the turn that calls it (``current_invoker``).
"""

from __future__ import annotations

from collections.abc import Coroutine
from contextvars import ContextVar
from typing import Any, Protocol

from raygrain.actors._errors import ClusterClosedError, InvalidScheduleError, UnknownMethodError
from raygrain.actors._identity import ActorId
from raygrain.actors._options import positive_seconds

__all__ = ["RESERVED_NAMES", "ActorRef", "Invoker", "current_invoker"]


class Invoker(Protocol):
    """What a reference calls through: a cluster client or a silo."""

    def invoke(
        self,
        target: ActorId,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> Coroutine[Any, Any, Any]: ...


current_invoker: ContextVar[Invoker | None] = ContextVar("raygrain_current_invoker", default=None)


# An actor method cannot use these names: the reference's own attributes would shadow it. (Kept
# few on purpose: the key is ``ref.actor_id.key``, so a method may be called ``key``.)
RESERVED_NAMES = frozenset({"actor_id", "with_timeout", "invoke"})
# What only the actor itself uses (the base class's ``self.timers``/``self.reminders``): a
# caller reaching for them through a reference gets a clear error, not a call to a method.
_ACTOR_ONLY = frozenset({"timers", "reminders", "streams"})


class ActorRef:
    """A reference to the actor ``actor_id``; ``await ref.method(*args)`` calls it."""

    __slots__ = ("_invoker", "_timeout", "actor_id")

    def __init__(
        self, actor_id: ActorId, invoker: Invoker | None = None, timeout: float | None = None
    ) -> None:
        self.actor_id = actor_id
        self._invoker = invoker
        self._timeout = timeout

    def with_timeout(self, seconds: float) -> ActorRef:
        """The same reference with a per-call deadline override for every call made through it."""
        seconds = positive_seconds(f"with_timeout of {self.actor_id}", seconds)
        return ActorRef(self.actor_id, self._invoker, seconds)

    def __getattr__(self, name: str) -> _BoundMethod:
        if name.startswith("_"):
            # Keep private and dunder lookups (copy, pickle, repr helpers) from turning into calls.
            raise AttributeError(name)
        if name in _ACTOR_ONLY:
            raise InvalidScheduleError(
                f"{self.actor_id}: {name} are the actor's own, used from inside its turns "
                f"(self.{name}); call an actor method that sets them up instead"
            )
        return _BoundMethod(self, name)

    def invoke(self, method: str, /, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        """Call ``method`` by name (for names that are not valid attribute lookups). (The name
        is positional only: the method's own arguments may include one called ``method``.)"""
        if not isinstance(method, str):
            raise UnknownMethodError(
                f"{self.actor_id.type_name}: a method is named by a str, got {method!r:.80}"
            )
        if method.startswith("_"):
            raise UnknownMethodError(
                f"{self.actor_id.type_name}.{method}: private and dunder methods cannot be called"
            )
        return _BoundMethod(self, method)(*args, **kwargs)

    def _resolve_invoker(self) -> Invoker:
        invoker = self._invoker or current_invoker.get()
        if invoker is None:
            raise ClusterClosedError(
                f"reference {self.actor_id} is not bound to a cluster: call it from inside an "
                "actor, or get it from a cluster with cluster.get(...)"
            )
        return invoker

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorRef) and other.actor_id == self.actor_id

    def __hash__(self) -> int:
        return hash(self.actor_id)

    def __repr__(self) -> str:
        return f"ActorRef({self.actor_id})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (ActorRef, (self.actor_id,))

    # A copy in this process keeps its binding (pickling drops it: another process has its own).
    def __copy__(self) -> ActorRef:
        return ActorRef(self.actor_id, self._invoker, self._timeout)

    def __deepcopy__(self, memo: dict[int, Any]) -> ActorRef:
        return self.__copy__()


class _BoundMethod:
    __slots__ = ("_name", "_ref")

    def __init__(self, ref: ActorRef, name: str) -> None:
        self._ref = ref
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        ref = self._ref
        call = ref._resolve_invoker().invoke(ref.actor_id, self._name, args, kwargs, ref._timeout)
        # Named after the method called, not the runtime function running it: a call never
        # awaited warns "coroutine 'deposit' was never awaited" (and a task's repr says
        # deposit()), which the user recognises. (One attribute set, ~20 ns a call; the
        # actor's type too would cost a string built per call.)
        call.__qualname__ = self._name  # type: ignore[attr-defined]  # (a coroutine has it)
        return call

    def __repr__(self) -> str:
        return f"<method {self._name} of {self._ref!r}>"
