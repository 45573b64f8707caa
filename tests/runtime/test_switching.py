"""The interpreter's switch interval while silos run (runtime/kernel/_switching.py): 1 ms,
shared by the silos of a process (the shortest asked for), given back when the last stops,
and left alone when asked (or when someone else changed it meanwhile)."""

from __future__ import annotations

import asyncio
import gc
import sys
import warnings
from collections.abc import Iterator

import pytest

from raygrain.actors import ConfigurationError
from raygrain.runtime import Cluster
from raygrain.runtime.kernel import DEFAULT_SWITCH_INTERVAL, Silo, SiloOptions
from raygrain.runtime.kernel._switching import hold_process_settings, hold_switch_interval
from tests import app

OWN = 0.0042  # the test's own interval (not Python's default, so that giving it back is seen)


@pytest.fixture(autouse=True)
def _interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(OWN)
    yield
    sys.setswitchinterval(before)


def test_holding_shortens_it_and_the_last_release_gives_it_back() -> None:
    first = hold_switch_interval(0.002)
    assert sys.getswitchinterval() == 0.002
    second = hold_switch_interval(0.0005)  # the shortest asked for wins
    assert sys.getswitchinterval() == 0.0005
    third = hold_switch_interval(0.003)
    assert sys.getswitchinterval() == 0.0005
    second()
    assert sys.getswitchinterval() == 0.002
    second()  # a second release of the same hold changes nothing
    assert sys.getswitchinterval() == 0.002
    first()
    third()
    assert sys.getswitchinterval() == OWN


def test_none_leaves_it_alone() -> None:
    release = hold_switch_interval(None)
    assert sys.getswitchinterval() == OWN
    release()
    assert sys.getswitchinterval() == OWN


def test_an_interval_someone_else_set_meanwhile_stays() -> None:
    first = hold_switch_interval(0.001)
    sys.setswitchinterval(0.0123)  # the application tunes it itself
    second = hold_switch_interval(0.0002)
    assert sys.getswitchinterval() == 0.0123
    second()
    first()
    assert sys.getswitchinterval() == 0.0123


async def test_a_local_cluster_sets_it_while_it_runs() -> None:
    async with Cluster.local(actors=[app.Worker], silos=2) as cluster:
        assert await cluster.get(app.Worker, "w").switch_interval() == DEFAULT_SWITCH_INTERVAL
    assert sys.getswitchinterval() == OWN
    async with Cluster.local(actors=[app.Worker], switch_interval=None) as cluster:
        assert await cluster.get(app.Worker, "w").switch_interval() == OWN
    async with Cluster.local(actors=[app.Worker], switch_interval=0.0025) as cluster:
        assert await cluster.get(app.Worker, "w").switch_interval() == 0.0025
    assert sys.getswitchinterval() == OWN


@pytest.mark.parametrize("bad", [0, -0.001, 1e-9, 2.0, float("nan"), float("inf"), True, "1ms"])
def test_a_bad_interval_is_refused_by_name(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="switch_interval"):
        Cluster.local(actors=[app.Worker], switch_interval=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("own", [0.0002, 86e-6, 0.0049])
def test_it_goes_back_to_the_exact_microsecond(own: float) -> None:
    # The interpreter keeps whole microseconds and truncates: 0.0002 read back and written as
    # is became 199 us, one less on every cluster started and stopped.
    sys.setswitchinterval(own)
    before = sys.getswitchinterval()
    for _ in range(3):
        hold_switch_interval(0.001)()
    assert sys.getswitchinterval() == before


def test_a_value_the_process_refuses_is_not_held() -> None:
    with pytest.raises(ValueError, match="switch_interval"):
        hold_switch_interval(0.0)
    release = hold_switch_interval(0.002)  # the process is not left refusing every later hold
    assert sys.getswitchinterval() == 0.002
    release()
    assert sys.getswitchinterval() == OWN


def test_a_refused_interval_gives_the_collector_back() -> None:
    before = gc.get_threshold()
    with pytest.raises(ValueError, match="switch_interval"):
        hold_process_settings(SiloOptions(gc_threshold=12_345, switch_interval=-1.0))
    assert gc.get_threshold() == before
    assert sys.getswitchinterval() == OWN


def test_a_cluster_never_closed_gives_them_back_when_its_loop_ends() -> None:
    before = gc.get_threshold()

    async def main() -> float:
        cluster = await Cluster.local(actors=[app.Worker]).start()  # and never closed
        return await cluster.get(app.Worker, "w").switch_interval()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        assert asyncio.run(main()) == DEFAULT_SWITCH_INTERVAL
    assert sys.getswitchinterval() == OWN
    assert gc.get_threshold() == before


async def test_a_local_cluster_whose_start_fails_gives_them_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = gc.get_threshold()
    start = Silo.start
    silos: list[Silo] = []

    def failing_second(silo: Silo) -> None:
        silos.append(silo)
        start(silo)
        if len(silos) == 2:
            raise RuntimeError("the second silo's extension failed to start")

    monkeypatch.setattr(Silo, "start", failing_second)
    cluster = Cluster.local(actors=[app.Worker], silos=3)
    with pytest.raises(RuntimeError, match="second silo"):
        await cluster.start()
    assert [silo.closed for silo in silos] == [True, True]  # the third never started
    assert sys.getswitchinterval() == OWN
    assert gc.get_threshold() == before
