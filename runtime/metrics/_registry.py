"""Where the runtime's figures are kept between exports: plain Python, cheap to record into.

A hot path (every call, every turn) records into a child found once by its labels and kept
by the caller (a counter's ``value += 1``, a histogram's pending values by a list append); exporters
(``prometheus_client`` in-process, ``ray.util.metrics`` on Ray) read the registry when they
are scraped or on a timer. Labels carry actor types, methods, reasons and error types, never
actor keys; each label holds at most ``max_label_values`` distinct values, after which new
ones are recorded as ``"other"`` (unbounded label sets have taken down metrics agents), the
gauges read at export included.
"""

from __future__ import annotations

import enum
import threading
from bisect import bisect_right
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "FLUSH_AT",
    "OVERFLOW",
    "CounterChild",
    "Family",
    "HistogramChild",
    "Kind",
    "MetricRegistry",
    "Sample",
    "items_of",
    "retried",
]

# Values a histogram keeps pending before it counts them into its buckets (see HistogramChild).
FLUSH_AT = 1023

OVERFLOW = "other"  # the value a label takes once it has max_label_values distinct ones

Labels = tuple[str, ...]

_K = TypeVar("_K")
_V = TypeVar("_V")
_T = TypeVar("_T")

# A scrape reads on the HTTP server's thread what the event loop's thread changes (activations,
# series, projections): a read that met a change is made again, this many times at most.
_READ_ATTEMPTS = 10


def retried(read: Callable[[], _T]) -> _T:
    """``read()``, made again while it fails because a dict it iterates changed under it
    ("dictionary changed size during iteration")."""
    for _ in range(_READ_ATTEMPTS - 1):
        try:
            return read()
        except RuntimeError:
            continue
    return read()


def keys_of(mapping: Mapping[_K, _V]) -> list[_K]:
    """A copy of ``mapping``'s keys (as ``items_of``). For a big map (the silo's activations)
    prefer this or ``values_of``: copying the items makes a tuple per entry while holding
    the GIL, which stalled the silo's loop for a tenth of a second at 100,000 activations."""
    return retried(lambda: list(mapping))


def values_of(mapping: Mapping[_K, _V]) -> list[_V]:
    """A copy of ``mapping``'s values (as ``keys_of``)."""
    return retried(lambda: list(mapping.values()))


def items_of(mapping: Mapping[_K, _V]) -> list[tuple[_K, _V]]:
    """A copy of ``mapping``'s items that another thread may be changing. Copying is one C
    loop, which another thread rarely interrupts (iterating in Python, it can switch threads
    at any step); a copy that met a change anyway is made again."""
    return retried(lambda: list(mapping.items()))


class Kind(enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class CounterChild:
    """One labelled series of a counter (or a gauge that is set, not read at export)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class HistogramChild:
    """One labelled series of a histogram: the count per bucket (not cumulative) and sum.

    Recording appends to ``pending`` (a list append: the hot path records this way, which is
    several times cheaper than finding the bucket per value); ``flush`` sorts the pending values
    and counts them into the buckets in one pass. Readers (``counts``, ``sum``, ``count``) flush
    first, so they see every value recorded. Only the recording thread appends; a flush may run
    on another thread (a scrape), so it takes the values it counts off the front of the list
    and never replaces it.
    """

    __slots__ = ("_above", "_counts", "_lock", "_sum", "bounds", "pending", "threshold")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self._sum = 0.0
        self._lock = threading.Lock()
        self.pending: list[float] = []
        # Values above ``threshold`` are also counted (slow turns), as they are counted into
        # the buckets: the hot path only appends.
        self.threshold: float | None = None
        self._above = 0

    def observe(self, value: float) -> None:
        pending = self.pending
        pending.append(value)
        if len(pending) > FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            self._count_pending()

    def snapshot(self) -> tuple[tuple[int, ...], float]:
        """The per-bucket counts and the sum, of the same values."""
        with self._lock:
            self._count_pending()
            return tuple(self._counts), self._sum

    def _count_pending(self) -> None:
        pending = self.pending
        taken = len(pending)
        if taken:
            values = pending[:taken]
            del pending[:taken]  # (values appended meanwhile stay, behind these)
            values.sort()
            counts = self._counts
            below = 0
            for index, bound in enumerate(self.bounds):
                # bisect_right: a value equal to a bound counts in that bound's bucket (le).
                upto = bisect_right(values, bound, below)
                counts[index] += upto - below
                below = upto
            counts[-1] += taken - below
            self._sum += sum(values)
            if self.threshold is not None:
                self._above += taken - bisect_right(values, self.threshold)

    @property
    def counts(self) -> list[int]:
        self.flush()
        return self._counts

    @property
    def sum(self) -> float:
        self.flush()
        return self._sum

    @property
    def count(self) -> int:
        return sum(self.counts)

    @property
    def above(self) -> int:
        """How many values recorded since ``threshold`` was set are above it."""
        self.flush()
        return self._above


@dataclass(frozen=True, slots=True)
class Sample:
    """What an exporter reads of one series: ``value`` (a counter or gauge), or a histogram's
    per-bucket counts and sum."""

    labels: dict[str, str]
    value: float = 0.0
    counts: tuple[int, ...] = ()
    sum: float = 0.0


class Family:
    """One metric: its name, help, kind, label names, and its series by label values."""

    def __init__(
        self,
        registry: MetricRegistry,
        name: str,
        help: str,
        kind: Kind,
        label_names: Sequence[str],
        bounds: Sequence[float] = (),
        read: Callable[[], dict[Labels, float]] | None = None,
    ) -> None:
        self.registry = registry
        self.name = name
        self.help = help
        self.kind = kind
        self.label_names = tuple(label_names)
        self.bounds = tuple(bounds)
        self.read = read  # a gauge computed when exported (e.g. activations per type)
        # The series by their (capped) label values, and every label values a recorder asked
        # for, capped or not, to the series that counts them.
        self.children: dict[Labels, CounterChild | HistogramChild] = {}
        self._lookup: dict[Labels, CounterChild | HistogramChild] = {}
        self._seen: list[set[str]] = [set() for _ in self.label_names]
        self._read_lock = threading.Lock()

    def counter(self, *values: str) -> CounterChild:
        child = self._lookup.get(values) or self._child(values)
        assert isinstance(child, CounterChild)
        return child

    def histogram(self, *values: str) -> HistogramChild:
        child = self._lookup.get(values) or self._child(values)
        assert isinstance(child, HistogramChild)
        return child

    def _capped(self, values: Labels) -> Labels:
        """``values`` with each label past its ``max_label_values`` distinct ones as ``other``."""
        if len(values) != len(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {values}")
        limit = self.registry.max_label_values
        capped = []
        for seen, value in zip(self._seen, values, strict=True):
            if value not in seen:
                if len(seen) >= limit:
                    value = OVERFLOW
                seen.add(value)
            capped.append(value)
        return tuple(capped)

    def _read_capped(self, read: Callable[[], dict[Labels, float]]) -> dict[Labels, float]:
        """A gauge read at export, capped as recorded series are: the values of the labels
        past the cap are summed as ``other`` (activations, queued calls)."""
        found = retried(read)
        summed: dict[Labels, float] = {}
        with self._read_lock:  # (two scrapes may read at once, on the server's threads)
            for values, value in found.items():
                key = self._capped(values)
                summed[key] = summed.get(key, 0.0) + value
        return summed

    def _child(self, values: Labels) -> CounterChild | HistogramChild:
        key = self._capped(values)
        child = self.children.get(key)
        if child is None:
            child = HistogramChild(self.bounds) if self.kind is Kind.HISTOGRAM else CounterChild()
            self.children[key] = child
        # (The aliases of overflowing values are not kept past 100 per value a label may take.)
        if len(self._lookup) < 100 * self.registry.max_label_values:
            self._lookup[values] = child
        return child

    def samples(self) -> Iterator[Sample]:
        constant = self.registry.constant_labels
        names = self.label_names
        if self.read is not None:
            for values, value in self._read_capped(self.read).items():
                yield Sample({**constant, **dict(zip(names, values, strict=True))}, value)
            return
        for values, child in items_of(self.children):
            labels = {**constant, **dict(zip(names, values, strict=True))}
            if isinstance(child, HistogramChild):
                counts, total = child.snapshot()
                yield Sample(labels, counts=counts, sum=total)
            else:
                yield Sample(labels, child.value)


class MetricRegistry:
    """The figures of one endpoint (a silo, or a client), with the labels every series of it
    carries (``silo``, ``deployment``)."""

    def __init__(self, constant_labels: dict[str, str], max_label_values: int = 100) -> None:
        self.constant_labels = dict(constant_labels)
        self.max_label_values = max_label_values
        self.families: dict[str, Family] = {}

    def add(
        self,
        name: str,
        help: str,
        kind: Kind,
        label_names: Sequence[str] = (),
        bounds: Sequence[float] = (),
        read: Callable[[], dict[Labels, float]] | None = None,
    ) -> Family:
        if name in self.families:
            raise ValueError(f"metric {name!r} is already registered")
        family = Family(self, name, help, kind, label_names, bounds, read)
        self.families[name] = family
        return family
