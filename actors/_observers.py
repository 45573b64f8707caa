"""``ObserverSet``: the observers an actor pushes notifications to, dropped when not renewed.

Orleans' ``ObserverManager``: an observer (a client's object, reached through an
``ObserverRef``) cannot say that it is gone, because a push has no reply. So every
subscription expires: the observer's owner renews it (subscribes again) within ``expiry``
seconds, and ``notify`` drops the ones it did not renew, with a log line and no error. The set
lives in the activation's memory; an actor that deactivates forgets its observers, and the
clients' next renewal brings them back.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

from raygrain.actors._errors import ConfigurationError, InvalidCallError
from raygrain.actors._streams import ObserverRef

__all__ = ["ObserverSet"]

_log = logging.getLogger("raygrain.streams")


class ObserverSet:
    """Observers with a renewal deadline. ``clock``: seconds, monotonic (tests pass a fake)."""

    def __init__(self, expiry: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        if isinstance(expiry, bool) or not isinstance(expiry, (int, float)) or not expiry > 0:
            raise ConfigurationError(f"ObserverSet expiry must be positive seconds, got {expiry!r}")
        if not math.isfinite(expiry):
            raise ConfigurationError("ObserverSet expiry must be finite: observers must renew")
        self.expiry = float(expiry)
        self._clock = clock
        self._expires: dict[ObserverRef, float] = {}

    def subscribe(self, observer: ObserverRef) -> None:
        """Add ``observer``, or renew it for another ``expiry`` seconds."""
        if not isinstance(observer, ObserverRef):
            raise ConfigurationError(
                f"only an ObserverRef can observe, got {type(observer).__name__}"
            )
        self._expires[observer] = self._clock() + self.expiry

    def unsubscribe(self, observer: ObserverRef) -> bool:
        return self._expires.pop(observer, None) is not None

    def notify(self, method: str, *args: Any) -> int:
        """Push ``method(*args)`` to every observer still subscribed; returns how many."""
        if not isinstance(method, str) or not method or method.startswith("_"):
            raise InvalidCallError(
                f"an observer notification names a public method, got {method!r:.80}"
            )
        self.drop_expired()
        for observer in self._expires:
            getattr(observer, method)(*args)
        return len(self._expires)

    def drop_expired(self) -> list[ObserverRef]:
        now = self._clock()
        gone = [o for o, expires in self._expires.items() if expires <= now]
        for observer in gone:
            del self._expires[observer]
            _log.info(
                "observer %s at %s dropped: not renewed within %g s",
                observer.observer_id,
                observer.address,
                self.expiry,
            )
        return gone

    def __len__(self) -> int:
        return len(self._expires)

    def __iter__(self) -> Iterator[ObserverRef]:
        return iter(list(self._expires))

    def __contains__(self, observer: object) -> bool:
        return observer in self._expires
