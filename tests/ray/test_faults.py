"""Losing a deployment's parts on Ray (issue 16, items 1, 2 and 8): the storage server's process
dies and is restarted, the controller lives where only Ray's own death takes it, and silos
follow Ray's node list. Each test runs its own deployment on the session's Ray (or adds and
removes a node of its own), so the session's deployment is left as it was."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest

from raygrain.runtime import Cluster
from tests import app
from tests.helpers import bounded, extra_node, json_document, wait_for_death
from tests.ray.test_failover import Workload

pytestmark = pytest.mark.ray


def _actors_in(namespace: str) -> list[str]:
    import ray

    return [
        e["name"]
        for e in ray.util.list_named_actors(all_namespaces=True)
        if e.get("namespace") == namespace
    ]


async def test_storage_server_killed_writes_resume_and_silo_deaths_are_still_detected(
    ray_silos: Any, key: Any, tmp_path: Any
) -> None:
    import ray

    from raygrain.runtime.ray_host import STORAGE_NAME, namespace_of

    cluster = Cluster.ray(
        actors=app.ALL_ACTORS,
        name="storage-loss",
        server_storage=f"sqlite:///{tmp_path}/state.db",
        deactivation_timeout=2.0,
    )
    async with cluster:
        namespace = namespace_of("storage-loss")
        server = ray.get_actor(STORAGE_NAME, namespace=namespace)
        work = Workload(cluster, key, accounts=200)
        running = asyncio.ensure_future(work.run())
        try:
            await asyncio.wait_for(work.until(300), 60)
            os.kill(await server.pid.remote(), signal.SIGKILL)  # mid-workload
            killed_at, first_after = time.monotonic(), work.next_amount
            # Ray restarts it on its node; every holder's handle reaches the new process.
            while not any(a >= first_after for amounts in work.acked.values() for a in amounts):
                assert time.monotonic() - killed_at < 60, "no write acknowledged since the kill"
                await asyncio.sleep(0.05)
            resumed_after = time.monotonic() - killed_at
            await asyncio.wait_for(work.until(work.acknowledged() + 300), 60)
            # The controller keeps its view in that store: a silo that dies now is still
            # declared dead (and its node gets a new silo).
            victim = cluster._caller._membership.view.active()[0]
            ray.kill(ray.get_actor(victim, namespace=namespace), no_restart=True)
            await wait_for_death(cluster, victim)
            await asyncio.wait_for(work.until(work.acknowledged() + 300), 60)
        finally:
            work.stop.set()
            await running
        await work.verify()  # nothing acknowledged lost, nothing applied twice or half
    print(f"\nstorage server killed: writes acknowledged again {resumed_after:.1f} s later")
    assert _actors_in(namespace) == []


async def test_shutdown_stops_everything_even_with_the_storage_server_gone_for_good(
    ray_silos: Any, tmp_path: Any
) -> None:
    import ray

    from raygrain.runtime.ray_host import STORAGE_NAME, namespace_of

    namespace = namespace_of("storage-gone")
    cluster = Cluster.ray(
        actors=app.ALL_ACTORS, name="storage-gone", server_storage=f"sqlite:///{tmp_path}/s.db"
    )
    async with cluster:
        await cluster.get(app.BankAccount, "x").deposit(1)
        ray.kill(ray.get_actor(STORAGE_NAME, namespace=namespace), no_restart=True)
    # aclose did not raise, and left nothing of the deployment running.
    assert _actors_in(namespace) == []


async def test_controller_lives_on_the_head_node_even_when_launched_from_a_worker(
    ray_silos: Any, tmp_path: Any
) -> None:
    """A worker node's death must never take the controller (or its standby) with it
    (detection would wait for Ray's node-death timeout and a restart: 16 s instead of 3)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from raygrain.runtime.ray_host import stop_everything

    @ray.remote(num_cpus=0)
    class Launcher:
        async def launch(self, db: str) -> list[str]:
            from raygrain.runtime.kernel import SiloOptions
            from raygrain.runtime.ray_host import CONTROLLER_NAME, STANDBY_NAME, RayLaunch, launch

            spec = RayLaunch((app.Chain,), storage=db, detached=True, name="from-worker")
            handles = await launch(spec, SiloOptions())
            names = (CONTROLLER_NAME, STANDBY_NAME)
            return [str(await handles[name].node_id.remote()) for name in names]

    worker = ray_silos.worker_node_ids[0]
    launcher = Launcher.options(  # type: ignore[attr-defined]
        scheduling_strategy=NodeAffinitySchedulingStrategy(worker, soft=False)
    ).remote()
    try:
        nodes = await launcher.launch.remote(f"sqlite:///{tmp_path}/w.db")
        assert nodes == [ray_silos.node_ids[0]] * 2  # the head node, not the launcher's
    finally:
        ray.kill(launcher)
        await stop_everything("from-worker")


async def test_a_node_that_joins_gets_its_silo_and_status_shows_it(
    ray_silos: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from raygrain.runtime.cli import main

    async with (
        Cluster.connect(ray_silos.address, actors=app.ALL_ACTORS) as cluster,
        extra_node(ray_silos, cluster) as (node, name),
    ):
        membership = cluster._caller._membership
        prefix = node.node_id[:12]
        assert len([n for n in membership.view.active() if prefix in n]) == 1  # per node: 1
        status = ["status", "--address", ray_silos.address, "--name", "default", "--json"]
        assert await asyncio.to_thread(main, status) == 0
        shown = json_document(capsys.readouterr().out)
        row = next(r for r in shown["silos"] if r["silo"] == name)
        assert row["node_id"] == node.node_id and row["status"] == "active"
        assert node.node_id not in shown["nodes"]["without_silo"]
        await cluster.get(app.Chain, "on-any-node").ping()


async def test_a_silo_made_by_hand_counts_as_joining_its_node_until_it_joins(
    ray_silos: Any,
) -> None:
    """What the controller's follower asks Ray before it starts a silo: the deployment's silos
    on a node that are not in the view yet. A silo made by hand with ``create_silo`` is named
    there from its creation, so the follower starts no twin beside it (tests/ray/
    test_reminders.py's node-kill test made one so, and its node got two silos)."""
    import ray

    from raygrain.runtime.kernel import SiloOptions
    from raygrain.runtime.ray_host import CONTROLLER_NAME, RayLaunch, create_silo, namespace_of

    controller = ray.get_actor(CONTROLLER_NAME, namespace=namespace_of("default"))
    worker = ray_silos.worker_node_ids[1]
    launch = RayLaunch(tuple(app.ALL_ACTORS), 1, None)
    name, silo = create_silo(worker, 7, launch, SiloOptions(deactivation_timeout=2.0))
    async with Cluster.connect(ray_silos.address, actors=app.ALL_ACTORS) as cluster:
        try:
            joining = await bounded(controller.joining_silos_on.remote(worker), "the controller")
            assert joining == [name], f"{name} not seen joining its node: {joining}"
            await bounded(silo.start.remote(), f"silo {name} to start", 60)
            joined = await bounded(controller.joining_silos_on.remote(worker), "the controller")
            assert joined == [], f"{name} has joined the view, yet is counted joining: {joined}"
        finally:
            ray.kill(silo, no_restart=True)
        await wait_for_death(cluster, name)  # the session's deployment as it was


# -- the node follower alone (no Ray) ------------------------------------------------------------


@pytest.mark.parametrize("per_node", [1, 2])
async def test_node_follower_keeps_silos_per_node_on_every_live_node(per_node: int) -> None:
    from raygrain.runtime.ray_host import NodeFollower

    nodes = ["n1", "n2"]
    live: dict[str, int] = {}
    started: list[tuple[str, int]] = []

    async def list_nodes() -> list[str]:
        return list(nodes)

    async def start(node: str, index: int) -> str:
        started.append((node, index))
        live[node] = live.get(node, 0) + 1
        return f"silo-{node}-{index}"

    follower = NodeFollower(per_node, list_nodes, lambda n: live.get(n, 0), start)
    assert len(await follower.fill()) == 2 * per_node
    assert await follower.fill() == []  # nothing missing: nothing started
    nodes.append("n3")  # a node joins
    live["n1"] -= 1  # and a silo of n1 dies
    await follower.fill()
    assert live == {"n1": per_node, "n2": per_node, "n3": per_node}
    follower.halt()
    nodes.append("n4")
    assert await follower.fill() == []  # halted: the deployment is going down


async def test_node_follower_counts_silos_that_are_joining() -> None:
    """A silo that exists on a node but has not joined the view yet (created by hand with
    ``create_silo``, or by a controller that died before it joined) counts towards the node's
    ``silos_per_node``: the follower started a second silo beside it, and the node held two
    (the reminders node-kill test then waited forever for a ring of four). One that has not
    joined after the start timeout stops counting, so a silo that never starts does not leave
    its node without one for good."""
    from raygrain.runtime.ray_host import NodeFollower

    now = [0.0]
    joining = {"n1": ["silo-n1-by-hand"]}
    started: list[str] = []

    async def list_nodes() -> list[str]:
        return ["n1"]

    async def start(node: str, index: int) -> str:
        started.append(node)
        return f"silo-{node}-{index}"

    async def joining_on(node: str) -> list[str]:
        return joining.get(node, [])

    follower = NodeFollower(
        1, list_nodes, lambda n: 0, start, joining_on=joining_on, clock=lambda: now[0]
    )
    assert await follower.fill() == []  # the node's silo is on its way: nothing started
    now[0] += 30
    assert await follower.fill() == []
    now[0] += 31  # past the start timeout: given up on, the node gets a silo of ours
    assert await follower.fill() == ["silo-n1-0"]
    assert started == ["n1"]


async def test_a_fill_waits_for_the_silos_a_fill_under_way_is_starting_on_a_node() -> None:
    """A launch asks the controller to fill the nodes; a client's or a silo's first call to a
    new controller may have woken its background loop first, already starting a node's silo.
    The launch's fill then found the node lacking nothing and reported no silo started (the
    launch took that for a failure: 'no silo started'). It waits for that silo now."""
    from raygrain.runtime.ray_host import NodeFollower

    live: dict[str, int] = {}
    starting, release = asyncio.Event(), asyncio.Event()

    async def list_nodes() -> list[str]:
        return ["n1"]

    async def start(node: str, index: int) -> str:
        starting.set()
        await release.wait()
        live[node] = live.get(node, 0) + 1
        return f"silo-{node}-{index}"

    follower = NodeFollower(1, list_nodes, lambda n: live.get(n, 0), start)
    first = asyncio.ensure_future(follower.fill())  # (the background loop's, say)
    await starting.wait()
    second = asyncio.ensure_future(follower.fill())  # the launch's
    release.set()
    assert await first == ["silo-n1-0"]
    assert await second == ["silo-n1-0"]
    assert live == {"n1": 1}
