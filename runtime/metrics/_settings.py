"""Metrics settings: a value object given to the silos in ``SiloOptions.capabilities``."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from raygrain.actors import ConfigurationError

__all__ = ["LATENCY_BOUNDS", "SIZE_BOUNDS", "MetricsSettings"]

# Seconds: 100 us to 60 s, about three buckets per decade (a local call takes ~50 us, a turn
# that writes to SQLite ~1-5 ms, a call timeout 30 s).
LATENCY_BOUNDS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
# Messages or records per batch.
SIZE_BOUNDS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000)


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """``enabled``: record metrics at all (off, a silo runs no metrics code); ``deployment``:
    the ``deployment`` label (None: the host's, ``local`` in-process and ``default`` on Ray;
    see ``label``); ``slow_turn_seconds``: a turn longer than this counts in
    ``raygrain_slow_turns_total``; ``max_label_values``: distinct values a label may take
    (types, methods, error types) before new ones are recorded as ``other``;
    ``export_period``: seconds between pushes to Ray's metrics agent (on Ray)."""

    enabled: bool = True
    deployment: str | None = None
    slow_turn_seconds: float = 1.0
    max_label_values: int = 100
    export_period: float = 5.0

    def __post_init__(self) -> None:
        # Refused here, not when a turn or a scrape first reads them (a slow_turn_seconds of
        # "1" from a config file failed every turn's count and every scrape).
        if not isinstance(self.enabled, bool):
            self._refuse("enabled", "True or False")
        if self.deployment is not None and (
            not isinstance(self.deployment, str) or not self.deployment
        ):
            self._refuse("deployment", "a non-empty str or None")
        for label in ("slow_turn_seconds", "export_period"):
            value = getattr(self, label)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not value > 0 or not math.isfinite(value):
                self._refuse(label, "a positive number of seconds")
        value = self.max_label_values
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            self._refuse("max_label_values", "an int >= 1")

    def _refuse(self, label: str, wanted: str) -> None:
        raise ConfigurationError(
            f"MetricsSettings.{label} must be {wanted}, got {getattr(self, label)!r}"
        )

    @property
    def label(self) -> str:
        """The ``deployment`` label (``default`` when no host chose one)."""
        return self.deployment or "default"

    @classmethod
    def chosen(cls, metrics: object, deployment: str) -> MetricsSettings:
        """The settings a user's ``metrics=`` option (a bool or settings) stands for, labelled
        ``deployment`` (the host's: ``local``, ``default``) unless they name their own."""
        if isinstance(metrics, MetricsSettings):
            return metrics if metrics.deployment else replace(metrics, deployment=deployment)
        if not isinstance(metrics, bool):
            raise ConfigurationError(
                f"metrics must be a bool or a MetricsSettings, got {type(metrics).__name__}"
            )
        return cls(enabled=metrics, deployment=deployment)

    @staticmethod
    def check_port(port: object, metrics: object) -> None:
        """Refuse a ``metrics_port`` that is no port, or given with metrics off."""
        if port is None:
            return
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port < 65536:
            raise ConfigurationError(f"metrics_port must be a port number, got {port!r}")
        if metrics is False:
            raise ConfigurationError("metrics_port needs metrics on (metrics=False was given)")
        if isinstance(metrics, MetricsSettings) and not metrics.enabled:
            raise ConfigurationError(
                "metrics_port needs metrics on (metrics=MetricsSettings(enabled=False) was given)"
            )
