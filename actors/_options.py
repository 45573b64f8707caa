"""Method and class options: how an actor's calls are scheduled, timed and persisted.

Method options are set by decorators and stored on the function; class options are given as
class keywords (``class Cart(Actor[State], reentrant=True): ...``). Both are frozen values that
the runtime reads once, when the class is registered.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from raygrain.actors._errors import ConfigurationError

__all__ = [
    "ActorOptions",
    "DeactivationReason",
    "MethodOptions",
    "Persistence",
    "always_interleave",
    "call_timeout",
    "one_way",
    "positive_seconds",
    "read_only",
    "transactional",
]

F = TypeVar("F", bound=Callable[..., Any])

_METHOD_OPTIONS_ATTR = "__raygrain_method_options__"


class Persistence(enum.Enum):
    """When an actor's state is written to storage."""

    PER_TURN = "per_turn"  # after every call that changed it, before the reply (the default)
    EXPLICIT = "explicit"  # only on ``await self.context.save()`` (Orleans' WriteStateAsync style)


class DeactivationReason(enum.Enum):
    """Why an activation is being deactivated; passed to ``on_deactivate``."""

    IDLE = "idle"  # idle longer than its idle_timeout
    REQUESTED = "requested"  # the actor called deactivate_on_idle()
    SHUTDOWN = "shutdown"  # the silo or cluster is closing
    HANDOVER = "handover"  # its ring owner changed; it moves to another silo
    INCONSISTENT_STATE = "inconsistent_state"  # a stale duplicate, fenced by its ETag
    ACTIVATION_FAILED = "activation_failed"  # on_activate or the state load failed


@dataclass(frozen=True, slots=True)
class MethodOptions:
    """How one actor method is scheduled."""

    read_only: bool = False
    always_interleave: bool = False
    one_way: bool = False
    transactional: bool = False
    timeout: float | None = None  # seconds; None: the cluster's default


@dataclass(frozen=True, slots=True)
class ActorOptions:
    """How an actor class is activated, scheduled and persisted."""

    name: str
    reentrant: bool = False
    stateless_worker: bool = False
    max_local_workers: int = 4
    idle_timeout: float | None = None  # seconds; None: the cluster's default (15 min)
    persistence: Persistence = Persistence.PER_TURN


def method_options(fn: Callable[..., Any]) -> MethodOptions:
    """The options a decorated method carries (defaults when undecorated)."""
    found = getattr(fn, _METHOD_OPTIONS_ATTR, None)
    return found if isinstance(found, MethodOptions) else MethodOptions()


def _with_option(fn: F, **changes: Any) -> F:
    setattr(fn, _METHOD_OPTIONS_ATTR, replace(method_options(fn), **changes))
    return fn


def read_only(fn: F) -> F:
    """The method does not change state: it may run together with other read-only calls,
    and its turn never writes to storage."""
    return _with_option(fn, read_only=True)


def always_interleave(fn: F) -> F:
    """The method may run at any time, interleaved with any other call of the activation."""
    return _with_option(fn, always_interleave=True)


def one_way(fn: F) -> F:
    """Fire and forget: the caller gets None as soon as the call is accepted, never a result
    or an error."""
    return _with_option(fn, one_way=True)


def transactional(fn: F) -> F:
    """The method runs inside a multi-actor transaction: it starts one, or joins the caller's."""
    return _with_option(fn, transactional=True)


def positive_seconds(label: str, seconds: object) -> float:
    """``seconds`` as a float if it is a positive number (NaN is not; a bool is not a number
    here), else a ConfigurationError naming ``label`` and the value."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise ConfigurationError(f"{label} must be a positive number of seconds, got {seconds!r}")
    return float(seconds)


def call_timeout(seconds: float) -> Callable[[F], F]:
    """Override the cluster's default call deadline for this method."""
    seconds = positive_seconds("call_timeout", seconds)

    def decorate(fn: F) -> F:
        return _with_option(fn, timeout=float(seconds))

    return decorate
