"""Which capabilities every silo and client runs: the runtime's composition root.

The kernel knows no capability; the hosts (``cluster``'s local backend and ``ray_host``) build
their silos with ``silo_extensions()`` and their clients' callers with ``client_filters()``.
A new capability adds itself here.
"""

from __future__ import annotations

from raygrain.runtime.kernel import CallFilter, Extension
from raygrain.runtime.timers import TimeService
from raygrain.runtime.transactions import TransactionFilter, Transactions

__all__ = ["client_filters", "silo_extensions"]


def silo_extensions() -> list[Extension]:
    """A fresh set of the extensions one silo runs."""
    return [Transactions(), TimeService()]


def client_filters() -> tuple[CallFilter, ...]:
    """The filters a client's calls pass through."""
    return (TransactionFilter(),)
