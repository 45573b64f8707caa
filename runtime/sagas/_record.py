"""A saga's durable progress (``SagaRecord``, the saga actor's state) and what callers see of
it (``SagaPhase``, ``SagaStatus``), and what a running step sees (``StepContext``).

The record is committed after every step (each step runs in a turn of the saga actor), so it
always says which steps completed, with their results, and which were compensated.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from raygrain.actors import ActorKey

__all__ = ["LIVE", "WOKEN", "SagaPhase", "SagaRecord", "SagaStatus", "StepContext"]


class SagaPhase(enum.Enum):
    """Where a saga is. ``COMPLETED``, ``COMPENSATED`` and ``STUCK`` are final (``STUCK``
    until an operator calls ``resume``)."""

    NOT_STARTED = "not_started"
    RUNNING = "running"  # running its steps forward
    COMPENSATING = "compensating"  # undoing its completed steps, newest first
    COMPLETED = "completed"  # every step succeeded
    COMPENSATED = "compensated"  # it failed, was aborted or timed out; everything was undone
    STUCK = "stuck"  # a compensation failed for good: an operator must look
    # Running or compensating, but its progress was made by another definition of its class
    # (another ``version``, or other steps): not run until code of its version serves it.
    PARKED = "parked"


LIVE = frozenset({SagaPhase.RUNNING.value, SagaPhase.COMPENSATING.value})
# The phases the saga index wakes every period (a parked saga: in case its code came back).
WOKEN = LIVE | {SagaPhase.PARKED.value}


@dataclass
class SagaRecord:
    """The saga actor's state. Values (the input, step results) are kept encoded."""

    phase: str = SagaPhase.NOT_STARTED.value
    input: bytes = b""
    # The definition it started under: its class's ``version`` and its steps by stage
    # (``"a | b+c | d"``); "" for a saga stored before sagas recorded it (taken as it is).
    version: int = 0
    steps: str = ""
    stage: int = 0  # the next stage to run forward
    results: dict[str, bytes] = field(default_factory=dict)  # completed steps
    in_doubt: list[str] = field(default_factory=list)  # attempted, effect unknown
    attempts: dict[str, int] = field(default_factory=dict)  # failed attempts, current stage
    compensated: list[str] = field(default_factory=list)
    error: str = ""  # the latest error of a step or compensation
    reason: str = ""  # why it stopped going forward
    timeout: float | None = None
    started: float = 0.0
    deadline: float | None = None
    wait_until: float | None = None  # the next attempt, after a backoff
    ended: float | None = None


@dataclass(frozen=True, slots=True)
class SagaStatus:
    """A saga's status as ``status()`` reports it. Times are seconds on the cluster's clock
    (wall-clock time under the system clock)."""

    saga: ActorKey
    phase: SagaPhase
    current: tuple[str, ...] = ()  # the steps running (or being compensated) now
    completed: tuple[str, ...] = ()
    compensated: tuple[str, ...] = ()
    # Steps whose outcome is unknown (a crash cut their attempt short, or it failed with an
    # error that does not say it did nothing) and that have not completed since: they may have
    # acted, so they are retried with their key and, if the saga compensates, compensated.
    in_doubt: tuple[str, ...] = ()
    attempts: int = 0  # failed attempts of the current steps
    error: str = ""
    reason: str = ""
    started_at: float | None = None
    ended_at: float | None = None
    next_attempt_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.phase in (SagaPhase.COMPLETED, SagaPhase.COMPENSATED, SagaPhase.STUCK)


@dataclass(frozen=True, slots=True)
class StepContext:
    """What a running step or compensation knows about itself (``self.current_step``).
    ``key`` is the step's idempotency key (``<saga type>/<saga id>/<step>``): the same for
    every attempt of the step and for its compensation; pass it on to what the step calls."""

    saga: ActorKey
    step: str
    key: str
    attempt: int
    compensating: bool
    result: Any = None  # (in a compensation) what the step returned, None if unknown
