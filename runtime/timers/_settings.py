"""Settings of timers and reminders, given to a cluster as ``reminders=ReminderSettings(...)``."""

from __future__ import annotations

import math
from dataclasses import dataclass

from raygrain.actors import ConfigurationError, InvalidScheduleError

__all__ = ["MAX_NAME_LENGTH", "MAX_SECONDS", "ReminderSettings", "check_delay", "check_name"]

# A timer's or reminder's due time and period, at most: ten years. Longer ones are a unit
# mistake (milliseconds for seconds), and far-future times lose the precision a schedule's
# arithmetic needs (first + n * period, in floats).
MAX_SECONDS = 10 * 365 * 86_400.0
# A name, at most (in characters): a reminder's is stored, listed and logged with each tick.
MAX_NAME_LENGTH = 256


@dataclass(frozen=True, slots=True)
class ReminderSettings:
    """``minimum_period``: reminders with a shorter period are refused (Orleans' default is one
    minute: a reminder is a durable, cluster-wide record, not a fast timer; lower it for
    tests). ``refresh_period``: how often a silo re-reads the reminders of its ring ranges
    (catching ones registered elsewhere during a membership change). ``retry_delay``: how soon
    a tick that could not be delivered (its activation failed or was going away) is tried
    again."""

    minimum_period: float = 60.0
    refresh_period: float = 60.0
    retry_delay: float = 1.0

    def __post_init__(self) -> None:
        for label in ("minimum_period", "refresh_period", "retry_delay"):
            value = getattr(self, label)
            if not _is_number(value) or value <= 0 or not math.isfinite(value):
                raise ConfigurationError(
                    f"ReminderSettings.{label} must be a positive number, got {value!r}"
                )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_delay(what: str, value: object, *, positive: bool) -> float:
    """``value`` as seconds, or ``InvalidScheduleError`` naming ``what`` was wrong."""
    if not _is_number(value) or not math.isfinite(value):  # type: ignore[arg-type]
        raise InvalidScheduleError(f"{what} must be a finite number of seconds, got {value!r}")
    seconds = float(value)  # type: ignore[arg-type]
    if positive and seconds <= 0:
        raise InvalidScheduleError(f"{what} must be positive, got {value!r}")
    if seconds < 0:
        raise InvalidScheduleError(f"{what} must not be negative, got {value!r}")
    if seconds > MAX_SECONDS:
        raise InvalidScheduleError(
            f"{what} must be at most {MAX_SECONDS:,.0f} s (ten years), got {value!r}"
        )
    return seconds


def check_name(what: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidScheduleError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidScheduleError(
            f"{what} must be at most {MAX_NAME_LENGTH} characters, got {len(value):,} "
            f"({value[:40]!r}...)"
        )
    return value
