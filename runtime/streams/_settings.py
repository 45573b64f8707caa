"""Settings of streams, given to a cluster as ``streams=StreamSettings(...)``."""

from __future__ import annotations

import math
from dataclasses import dataclass

from raygrain.actors import ConfigurationError, StreamId

__all__ = ["StreamSettings"]


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """``fast``: the namespaces delivered in memory (fire and forget, may lose events); every
    other namespace is durable (appended to the event log before ``publish`` returns).
    ``max_attempts``: how many times a consumer may raise on one event before it goes to the
    dead letters. ``retry_delay``: seconds between those attempts. ``max_batch``: events one
    consumer turn may take at once. ``max_in_flight``: events held in memory per consumer
    subscription (a durable stream leaves the rest in the log and reads it back; a fast one
    drops what does not fit). ``sweep_period``: how often a silo checks the log of the
    namespaces it owns for events whose delivery a crash interrupted."""

    fast: frozenset[str] = frozenset()
    max_attempts: int = 3
    retry_delay: float = 0.5
    max_batch: int = 64
    max_in_flight: int = 1_000
    sweep_period: float = 2.0

    def __post_init__(self) -> None:
        fast = self.fast
        if isinstance(fast, str) or not all(isinstance(n, str) for n in fast):
            raise ConfigurationError(
                f"StreamSettings.fast must be a set of namespace names, got {fast!r}"
            )
        for namespace in fast:
            StreamId(namespace, "")  # names a bad namespace
        object.__setattr__(self, "fast", frozenset(fast))
        for label in ("max_attempts", "max_batch", "max_in_flight"):
            value = getattr(self, label)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(
                    f"StreamSettings.{label} must be an int >= 1, got {value!r}"
                )
        for label in ("retry_delay", "sweep_period"):
            value = getattr(self, label)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
                or (label == "sweep_period" and value == 0)
            ):
                raise ConfigurationError(
                    f"StreamSettings.{label} must be a finite number of seconds"
                    f"{' > 0' if label == 'sweep_period' else ' >= 0'}, got {value!r}"
                )

    def is_fast(self, namespace: str) -> bool:
        return namespace in self.fast
