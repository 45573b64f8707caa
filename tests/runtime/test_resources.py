"""Resources over a cluster's life: what it opens, it closes, even when its closing is cut short."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from raygrain import Actor, DeactivationReason
from raygrain.actors import ActorId
from raygrain.runtime import Cluster
from raygrain.storage import SqliteStorage
from tests.helpers import wait_until

GATES: dict[str, asyncio.Event] = {}  # made by each test, in its own event loop


class Lingering(Actor[list[str]], name="resources.Lingering"):
    """An actor whose on_deactivate waits to be released."""

    async def touch(self) -> int:
        self.state.append("touched")
        return len(self.state)

    async def on_deactivate(self, reason: DeactivationReason) -> None:
        GATES["started"].set()
        await GATES["release"].wait()


async def test_a_cancelled_close_still_closes_everything(tmp_path: Path) -> None:
    # (The close stopped where it was cancelled, e.g. by a timeout around it: the silos half
    # closed, their tasks and the SQLite connections left open, and another aclose() did
    # nothing, as the cluster counted as closed.)
    started, release = GATES["started"], GATES["release"] = asyncio.Event(), asyncio.Event()
    cluster = Cluster.local(actors=[Lingering], storage=f"sqlite:///{tmp_path / 'state.db'}")
    await cluster.start()
    assert await cluster.get(Lingering, "a").touch() == 1
    closing = asyncio.ensure_future(cluster.aclose())
    await started.wait()
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    release.set()
    await cluster.aclose()
    storage = cluster._backend.storage  # type: ignore[attr-defined]
    assert isinstance(storage, SqliteStorage)

    def closed() -> bool:
        silo_tasks = [task for silo in cluster.silos for task in silo._tasks]
        return storage._closed and storage._writer is None and not silo_tasks

    await wait_until(closed, "the silos' tasks and the store to be closed", bound=5)
    async with SqliteStorage(tmp_path / "state.db") as reopened:  # the write is there
        assert (await reopened.read(ActorId("resources.Lingering", "a"))).data is not None


class Counter(Actor[int], name="resources.Counter"):
    async def on_activate(self) -> None:
        self.timers.every(0.01, self._tick)

    async def _tick(self) -> None:
        pass

    async def add(self) -> int:
        self.state += 1
        return self.state


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files in /proc")
async def test_fifty_clusters_opened_and_closed_leave_nothing_behind(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}?durability=normal"
    before = (_open_files(), set(threading.enumerate()), asyncio.all_tasks())
    for round_ in range(50):
        async with Cluster.local(actors=[Counter], storage=url) as cluster:
            counts = await asyncio.gather(*(cluster.get(Counter, k).add() for k in range(5)))
            assert counts == [round_ + 1] * 5
    await wait_until(
        lambda: set(threading.enumerate()) <= before[1], "the connections' threads to end"
    )
    assert asyncio.all_tasks() <= before[2] | {asyncio.current_task()}
    assert _open_files() <= before[0]


async def _run_on_another_thread(
    coroutine: Callable[[], Coroutine[Any, Any, object]],
) -> list[BaseException]:
    """Run ``coroutine()`` on another thread's event loop; what it raised, if anything."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(coroutine())
        except BaseException as exc:
            raised.append(exc)

    elsewhere = threading.Thread(target=run)
    elsewhere.start()
    await asyncio.to_thread(elsewhere.join)
    return raised


async def test_a_close_from_another_thread_is_refused_and_the_cluster_still_closes() -> None:
    # Closing from another thread (its own event loop) failed with asyncio's ValueError
    # ('The future belongs to a different loop') half-way: one silo closed, the other not,
    # and every later aclose() failed the same way, so the cluster could never be closed.
    from raygrain.actors import ClusterClosedError, InvalidCallError

    cluster = await Cluster.local(actors=[Counter]).start()
    assert await cluster.get(Counter, "a").add() == 1
    raised = await _run_on_another_thread(lambda: cluster.aclose())
    assert [type(exc) for exc in raised] == [InvalidCallError], raised
    assert "run_coroutine_threadsafe" in str(raised[0])
    assert await cluster.get(Counter, "a").add() == 2  # untouched
    await cluster.aclose()  # on its own loop
    assert all(silo.closed for silo in cluster.silos)
    with pytest.raises(ClusterClosedError):
        await cluster.get(Counter, "a").add()


async def test_a_call_from_another_threads_event_loop_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    # A call made on another thread's event loop ran its turn there, on the cluster's objects,
    # and failed with asyncio's RuntimeError ('got Future attached to a different loop') once
    # the turn waited for its write; over the wire its answer would come to the cluster's loop
    # for a future of the other. It is refused before anything is sent.
    from raygrain.actors import InvalidCallError

    cluster = Cluster.local(actors=[Lingering], storage=f"sqlite:///{tmp_path / 'state.db'}")
    async with cluster:
        actor = cluster.get(Lingering, "a")
        assert await actor.touch() == 1
        raised = await _run_on_another_thread(lambda: actor.touch())
        assert [type(exc) for exc in raised] == [InvalidCallError], raised
        assert "run_coroutine_threadsafe" in str(raised[0])
        assert await actor.touch() == 2  # the refused call changed nothing
        GATES["started"], GATES["release"] = asyncio.Event(), asyncio.Event()
        GATES["release"].set()


async def test_a_close_from_another_thread_after_the_close_returns_as_any_later_one() -> None:
    # aclose() after the cluster has closed does nothing, wherever it runs (a program closing
    # once more from its own asyncio.run, its first loop gone): it was refused as a close from
    # another thread (c216fc3), though nothing was left to close.
    cluster = await Cluster.local(actors=[Counter]).start()
    await cluster.aclose()
    raised = await _run_on_another_thread(lambda: cluster.aclose())
    assert raised == []
