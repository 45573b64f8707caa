"""How a silo's death is detected: the probing settings the controller follows."""

from __future__ import annotations

from dataclasses import dataclass

from raygrain.actors import ConfigurationError

__all__ = ["FailureDetection"]


@dataclass(frozen=True, slots=True)
class FailureDetection:
    """How the controller decides that a silo is dead.

    Every ``probe_period`` seconds each active silo is probed; a probe that is not answered
    within ``probe_timeout`` is missed, and ``missed_probes`` misses in a row declare the silo
    dead (about ``missed_probes * (probe_timeout + probe_period)`` after a crash: 3 s by
    default). Ray's own word that the silo's actor died declares it dead at once. Probes are
    answered on their own thread, so a long CPU-bound turn does not miss them.
    """

    probe_period: float = 0.5
    probe_timeout: float = 1.0
    missed_probes: int = 2

    def __post_init__(self) -> None:
        for label in ("probe_period", "probe_timeout"):
            value = getattr(self, label)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigurationError(
                    f"FailureDetection.{label} must be a positive number of seconds, got {value!r}"
                )
        missed = self.missed_probes
        if isinstance(missed, bool) or not isinstance(missed, int) or missed < 1:
            raise ConfigurationError(
                f"FailureDetection.missed_probes must be an int >= 1, got {self.missed_probes!r}"
            )
