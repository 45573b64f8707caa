"""How a saga is defined: its steps (``@step``), their compensations and their retry policies.

A saga class lists its steps as methods decorated with ``@step``, in the order they run; a
step's compensation is a method decorated with ``@<step>.compensate``. Consecutive steps given
the same ``group`` run together, in parallel, as one stage. Neither a step nor a compensation
is a callable actor method: the decorators turn them into descriptors the saga runs itself.
"""

from __future__ import annotations

import inspect
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, overload

from raygrain.actors import (
    ActorCallTimeout,
    ConfigurationError,
    DeadlockError,
    InvalidCallError,
    SerializationError,
    SiloUnavailableError,
    TerminalError,
    TransactionInDoubtError,
    TurnRolledBackError,
)

__all__ = [
    "Compensation",
    "Retry",
    "Step",
    "check_seconds",
    "is_unknown_outcome",
    "stages_of",
    "step",
]

StepFunction = Callable[..., Awaitable[Any]]

# Errors a retry cannot mend (a bad call, an unencodable value, a call cycle): never retried.
_PROGRAMMING_ERRORS = (InvalidCallError, ConfigurationError, SerializationError, DeadlockError)
# Errors after which nobody knows whether the call acted.
_UNKNOWN_OUTCOME = (
    SiloUnavailableError,
    ActorCallTimeout,
    TurnRolledBackError,
    TransactionInDoubtError,
)


@dataclass(frozen=True, slots=True)
class Retry:
    """How a step (or a compensation) is retried: exponential backoff from ``first_delay``
    seconds, times ``multiplier`` per failed attempt, capped at ``max_delay``, each delay
    shortened by up to ``jitter`` of itself at random (so that retries spread out); at most
    ``max_attempts`` attempts in all (None: no limit). An error of a ``terminal`` type (or a
    ``TerminalError``, or a programming error such as ``InvalidCallError``) is never
    retried."""

    first_delay: float = 1.0
    multiplier: float = 2.0
    max_delay: float = 100.0
    jitter: float = 0.2
    max_attempts: int | None = 10
    terminal: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        for label in ("first_delay", "max_delay"):
            value = getattr(self, label)
            if not _is_number(value) or value < 0 or not math.isfinite(value):
                raise ConfigurationError(f"Retry.{label} must be a number >= 0, got {value!r}")
        if not _is_number(self.multiplier) or not 1 <= self.multiplier < math.inf:
            raise ConfigurationError(f"Retry.multiplier must be >= 1, got {self.multiplier!r}")
        if not _is_number(self.jitter) or not 0 <= self.jitter <= 1:
            raise ConfigurationError(f"Retry.jitter must be between 0 and 1, got {self.jitter!r}")
        attempts = self.max_attempts
        if attempts is not None and (not isinstance(attempts, int) or attempts < 1):
            raise ConfigurationError(
                f"Retry.max_attempts must be an int >= 1 or None, got {attempts!r}"
            )
        if not isinstance(self.terminal, tuple) or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in self.terminal
        ):
            raise ConfigurationError(
                f"Retry.terminal must be a tuple of exception types, got {self.terminal!r}"
            )

    def delay(self, failed: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``failed``-th failed attempt (1 for the first)."""
        exponent = min(max(failed - 1, 0), 1000)  # (beyond that the cap holds anyway)
        base = min(self.max_delay, self.first_delay * self.multiplier**exponent)
        return base * (1.0 - self.jitter * (rng or random).random())

    def exhausted(self, failed: int) -> bool:
        return self.max_attempts is not None and failed >= self.max_attempts

    def is_terminal(self, error: BaseException) -> bool:
        return isinstance(error, (TerminalError, *_PROGRAMMING_ERRORS, *self.terminal))

    def did_nothing(self, error: BaseException) -> bool:
        """Whether ``error`` says the step did nothing: one the step raised to refuse
        (``TerminalError``, a type of ``terminal``), which is then not compensated."""
        return isinstance(error, (TerminalError, *self.terminal))


def is_unknown_outcome(error: BaseException) -> bool:
    """Whether, after ``error``, the call may or may not have acted."""
    return isinstance(error, _UNKNOWN_OUTCOME)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_seconds(label: str, value: object, error: type[Exception] = ConfigurationError) -> float:
    """``value`` as a float if it is a positive, finite number of seconds (not NaN, not a
    bool); else ``error`` naming ``label`` and the value."""
    if not _is_number(value) or not 0 < value < math.inf:  # type: ignore[operator]
        raise error(f"{label} must be a positive number of seconds, got {value!r}")
    return float(value)  # type: ignore[arg-type]


class Step:
    """One step of a saga (made by ``@step``): a method that does the work, and optionally a
    compensation (``@<step>.compensate``) that undoes it."""

    def __init__(
        self, function: StepFunction, retry: Retry | None = None, group: str | None = None
    ) -> None:
        if not inspect.iscoroutinefunction(function):
            raise ConfigurationError(f"@step decorates an async method, got {function!r}")
        _check_arguments(function, ("self", "input"), "@step")
        if retry is not None and not isinstance(retry, Retry):
            raise ConfigurationError(f"@step(retry=...) takes a Retry, got {retry!r}")
        if group is not None and (not isinstance(group, str) or not group):
            raise ConfigurationError(f"@step(group=...) takes a non-empty string, got {group!r}")
        self.function = function
        self.name: str = getattr(function, "__name__", "step")
        self.retry = retry
        self.group = group
        self.compensation: StepFunction | None = None
        self.compensation_retry: Retry | None = None

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<saga step {self.name!r}>"

    def compensate(
        self, function: StepFunction | None = None, *, retry: Retry | None = None
    ) -> Any:
        """Decorate the method that undoes this step: ``async def undo(self, input, result)``,
        where ``result`` is what the step returned (None when the step's outcome was unknown:
        it may or may not have acted)."""

        def decorate(undo: StepFunction) -> Compensation:
            if not inspect.iscoroutinefunction(undo):
                raise ConfigurationError(f"{self}: compensate decorates an async method")
            _check_arguments(undo, ("self", "input", "result"), f"{self}: compensate")
            if retry is not None and not isinstance(retry, Retry):
                raise ConfigurationError(f"{self}: compensate(retry=...) takes a Retry")
            self.compensation = undo
            self.compensation_retry = retry
            return Compensation(self, undo)

        return decorate if function is None else decorate(function)


def _check_arguments(function: StepFunction, names: tuple[str, ...], what: str) -> None:
    """Refuse, at class definition, a step or compensation that cannot take the arguments the
    saga passes it: called, it would fail with a TypeError on every attempt, retried with
    backoff for minutes (and a compensation's would leave the saga stuck)."""
    try:
        inspect.signature(function).bind(*names)
    except TypeError:
        name = getattr(function, "__qualname__", repr(function))
        raise ConfigurationError(
            f"{what} {name}{inspect.signature(function)} must take "
            f"({', '.join(names)}): the saga calls it with those"
        ) from None


class Compensation:
    """What ``@<step>.compensate`` leaves in the class: not a callable actor method."""

    def __init__(self, step: Step, function: StepFunction) -> None:
        self.step = step
        self.function = function

    def __repr__(self) -> str:
        return f"<compensation of saga step {self.step.name!r}>"


@overload
def step(function: StepFunction, /) -> Step: ...


@overload
def step(
    *, retry: Retry | None = None, group: str | None = None
) -> Callable[[StepFunction], Step]: ...


def step(
    function: StepFunction | None = None,
    /,
    *,
    retry: Retry | None = None,
    group: str | None = None,
) -> Step | Callable[[StepFunction], Step]:
    """Make an async method a step of its saga: ``async def name(self, input) -> result``.
    ``retry``: its policy (default: the saga's ``retry_policy``); ``group``: consecutive steps
    of one group run in parallel, as one stage."""
    if function is None:
        return lambda f: Step(f, retry, group)
    return Step(function, retry, group)


def stages_of(cls: type, reserved: frozenset[str]) -> tuple[tuple[Step, ...], ...]:
    """The stages of a saga class: its steps (its bases' first) in definition order, with
    consecutive steps of one group together."""
    steps: dict[str, Step] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if isinstance(value, Step):
                if name in reserved:
                    raise ConfigurationError(
                        f"{cls.__qualname__}.{name}: a step cannot be named after a saga "
                        f"operation or an attribute of every actor "
                        f"({', '.join(sorted(reserved))}); rename it"
                    )
                steps.pop(name, None)
                steps[name] = value
            elif isinstance(value, Compensation) and vars(klass).get(value.step.name) is value:
                # (``@a.compensate`` on a method named ``a``, as a property's setter is
                # written: it would replace the step it undoes, and the saga run without it.)
                raise ConfigurationError(
                    f"{cls.__qualname__}.{name}: the compensation of step {name!r} has the "
                    "step's own name, which replaces the step; give it a name of its own "
                    f"(e.g. undo_{name})"
                )
            elif name in steps:
                del steps[name]  # overridden by something that is not a step
    stages: list[list[Step]] = []
    for found in steps.values():
        if stages and found.group is not None and stages[-1][-1].group == found.group:
            stages[-1].append(found)
        else:
            stages.append([found])
    return tuple(tuple(stage) for stage in stages)
