"""The process's garbage collector while silos run (runtime/kernel/_collector.py): its young
generation's threshold raised, shared by the silos of a process, given back when the last
stops, and left alone when asked (or when someone else changed it meanwhile)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from raygrain.actors import ConfigurationError
from raygrain.runtime import Cluster
from raygrain.runtime.kernel import DEFAULT_GC_THRESHOLD
from raygrain.runtime.kernel._collector import hold_collector
from tests import app


@pytest.fixture(autouse=True)
def _thresholds() -> Iterator[tuple[int, int, int]]:
    """The test starts from thresholds of its own (not the default, so that giving them back
    is seen) and leaves the process's as they were."""
    before = gc.get_threshold()
    gc.set_threshold(321, 9, 8)
    yield gc.get_threshold()
    gc.set_threshold(*before)


def test_holding_raises_the_young_threshold_and_the_last_release_gives_it_back() -> None:
    first = hold_collector(5_000)
    assert gc.get_threshold() == (5_000, 9, 8)
    second = hold_collector(7_000)  # the largest asked for wins
    assert gc.get_threshold() == (7_000, 9, 8)
    second()
    assert gc.get_threshold() == (5_000, 9, 8)
    second()  # a second release of the same hold changes nothing
    assert gc.get_threshold() == (5_000, 9, 8)
    first()
    assert gc.get_threshold() == (321, 9, 8)


def test_none_leaves_the_collector_alone() -> None:
    release = hold_collector(None)
    assert gc.get_threshold() == (321, 9, 8)
    release()
    assert gc.get_threshold() == (321, 9, 8)


def test_thresholds_someone_else_set_meanwhile_stay() -> None:
    first = hold_collector(5_000)
    gc.set_threshold(1_234, 5, 5)  # the application tunes it itself
    second = hold_collector(9_000)
    assert gc.get_threshold() == (1_234, 5, 5)
    second()
    first()
    assert gc.get_threshold() == (1_234, 5, 5)
    # Once every hold is gone, the next one starts afresh from the current thresholds.
    third = hold_collector(4_000)
    assert gc.get_threshold() == (4_000, 5, 5)
    third()
    assert gc.get_threshold() == (1_234, 5, 5)


async def test_a_local_cluster_raises_it_while_it_runs() -> None:
    async with Cluster.local(actors=[app.Worker], silos=2) as cluster:
        assert await cluster.get(app.Worker, "w").gc_thresholds() == (DEFAULT_GC_THRESHOLD, 9, 8)
    assert gc.get_threshold() == (321, 9, 8)
    async with Cluster.local(actors=[app.Worker], gc_threshold=None) as cluster:
        assert await cluster.get(app.Worker, "w").gc_thresholds() == (321, 9, 8)
    async with Cluster.local(actors=[app.Worker], gc_threshold=2_500) as cluster:
        assert await cluster.get(app.Worker, "w").gc_thresholds() == (2_500, 9, 8)
    assert gc.get_threshold() == (321, 9, 8)


@pytest.mark.parametrize("bad", [0, -5, True, 1.5, "10000"])
def test_a_bad_threshold_is_refused_by_name(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="gc_threshold"):
        Cluster.local(actors=[app.Worker], gc_threshold=bad)  # type: ignore[arg-type]
