"""Node death, busy silos, false suspicion and joins on a ray.cluster_utils cluster.

Each test adds its own node or silo to the session's three, so the session's silos survive.
The tests of the data path run on both client transports; those of membership alone (a busy
silo, a false suspicion, a join) run on the default one, since the client's transport plays no
part in what they check.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from raygrain.actors import SiloUnavailableError
from raygrain.runtime import Cluster
from tests import app
from tests.app import Chain
from tests.helpers import (
    RETRYABLE,
    Workload,
    bounded,
    check_transfers,
    extra_node,
    wait_for_active,
    wait_for_death,
    wait_for_silos,
    wait_until,
)

pytestmark = pytest.mark.ray


async def _start_extra_silo(node_id: str, index: int) -> tuple[str, Any]:
    from raygrain.runtime.kernel import SiloOptions
    from raygrain.runtime.ray_host import RayLaunch, create_silo

    launch = RayLaunch(tuple(app.ALL_ACTORS), 1, None)
    name, handle = create_silo(node_id, index, launch, SiloOptions(deactivation_timeout=2.0))
    await bounded(handle.start.remote(), f"silo {name} to start", 60)
    return name, handle


# The kill at different moments, one on each client transport (both moments on both
# transports cost CI half a minute and found nothing the pairs below do not).
@pytest.mark.parametrize(("ray_transport", "writes_before_kill"), [("ray", 30), ("direct", 600)])
async def test_node_killed_mid_workload_every_actor_comes_back(
    ray_silos: Any, ray_transport: str, key: Any, writes_before_kill: int
) -> None:
    async with (
        Cluster.connect(
            ray_silos.address, transport=ray_transport, actors=app.ALL_ACTORS
        ) as cluster,
        extra_node(ray_silos, cluster) as (node, name),
    ):
        work = Workload(cluster, key, accounts=2000)
        ring = cluster._caller._membership.ring
        doomed = [r for r in work.refs if ring.owner(r.actor_id) == name]
        assert doomed, "some accounts must live on the silo that dies"
        await asyncio.gather(*(work.deposit(r) for r in work.refs))  # activate all 2000
        running = asyncio.ensure_future(work.run())
        await work.until(work.acknowledged() + writes_before_kill)
        killed_at = time.monotonic()
        ray_silos.nodes.remove_node(node, allow_graceful=False)
        # The killed silo's process may still answer for a moment: a call counts as having
        # reached a new owner only once the view has dropped the dead one.
        await wait_for_death(cluster, name)
        # The first call that lands on a new owner (each try is a deposit that may fail).
        await wait_until(lambda: work.deposit(doomed[0]), "a call to reach a new owner", 60)
        back_after = time.monotonic() - killed_at
        await work.until(work.acknowledged() + 300)
        work.stop.set()
        await running
        print(
            f"\nnode kill: first successful call on a reactivated actor {back_after:.2f} s "
            f"after the kill; failures {dict(work.failures)}; "
            f"{work.acknowledged()} writes acknowledged"
        )
        assert name in cluster._caller._membership.view.dead()
        # Calls in flight on the dead silo fail quickly with the retryable error, when it is
        # declared dead: none may hang to its deadline (an ActorCallTimeout).
        work.bound_failures(since=killed_at)
        await work.verify()
        for ref in doomed[:50]:  # every actor of the dead silo is reachable again
            await ref.balance()


async def test_busy_silo_is_not_declared_dead(ray_silos: Any) -> None:
    import ray

    from raygrain.runtime.membership import FailureDetection
    from raygrain.runtime.ray_host import CONTROLLER_NAME, namespace_of

    detection = FailureDetection()  # what the session's controller runs with
    window = detection.missed_probes * (detection.probe_timeout + detection.probe_period)
    controller = ray.get_actor(CONTROLLER_NAME, namespace=namespace_of("default"))
    async with Cluster.connect(ray_silos.address, actors=app.ALL_ACTORS) as cluster:
        busy = cluster.get(Chain, "busy")
        host = cluster._caller._membership.ring.owner(busy.actor_id)
        # Hold the silo's loop for well over the detection window: a probe answered on that
        # loop would miss enough times in a row to declare the silo dead.
        spins = await busy.with_timeout(120).spin(3 * window)
        assert spins > 0
        assert host in cluster._caller._membership.view.active()
        assert await busy.ping() == "pong from busy"  # the same silo serves on
    deaths = await controller.death_log.remote()
    assert host not in [d["silo"] for d in deaths], deaths


async def test_false_suspicion_loses_and_duplicates_nothing(ray_silos: Any, key: Any) -> None:

    worker_node = ray_silos.worker_node_ids[0]  # a node of the session's, never killed
    name, extra = await _start_extra_silo(worker_node, 2)
    async with Cluster.connect(ray_silos.address, actors=app.ALL_ACTORS) as cluster:
        await wait_for_active(cluster, name)
        work = Workload(cluster, key, accounts=300)
        running = asyncio.ensure_future(work.run())
        await work.until(300)
        suspected_from = time.monotonic()
        await extra.delay_probes.remote(5.0)  # alive, but looks dead to the controller
        await wait_for_death(cluster, name)
        await work.until(work.acknowledged() + 300)
        work.stop.set()
        await running
        await work.verify()
        work.bound_failures(since=suspected_from)
        # Fencing: declared dead, it stops serving (it stops itself, and is killed).
        await bounded(_stopped(extra), f"silo {name}, declared dead, to stop", 60)


async def _stopped(handle: Any) -> None:
    import ray

    while True:
        try:
            await handle.stats.remote()
        except ray.exceptions.RayActorError:
            return
        await asyncio.sleep(0.1)


async def test_calls_in_flight_on_a_killed_silo_fail_with_the_retryable_error(
    ray_silos: Any, ray_transport: str, key: Any
) -> None:
    import ray

    worker_node = ray_silos.worker_node_ids[0]  # a node of the session's, never killed
    index = 7 if ray_transport == "ray" else 8  # (a silo name is never used twice)
    name, extra = await _start_extra_silo(worker_node, index)
    async with Cluster.connect(
        ray_silos.address, transport=ray_transport, actors=app.ALL_ACTORS
    ) as cluster:
        await wait_until(
            lambda: name in cluster._caller._membership.view.active(), f"{name} to join", 60
        )
        ring = cluster._caller._membership.ring
        refs = (cluster.get(app.Recorder, key(f"in-flight{i}")) for i in range(10_000))
        doomed = [ref for ref in refs if ring.owner(ref.actor_id) == name][:5]
        # Calls that would run for an hour, with an hour's deadline, on the silo that dies.
        calls = [asyncio.ensure_future(ref.with_timeout(3600).sleep(3600)) for ref in doomed]
        await wait_until(
            lambda: len(cluster._caller._pending) >= len(doomed), "the calls to be sent"
        )
        ray.kill(extra, no_restart=True)
        outcomes = await bounded(
            asyncio.gather(*calls, return_exceptions=True), "the in-flight calls to fail", 60
        )
        assert all(isinstance(o, SiloUnavailableError) for o in outcomes), outcomes
        await wait_for_death(cluster, name)
        reactivated = [await ref.with_timeout(60).entries() for ref in doomed[:2]]
        assert reactivated == [[], []]  # on the silos that remain


async def test_join_mid_workload_moves_about_a_quarter_and_loses_no_call(
    ray_silos: Any, key: Any
) -> None:
    import ray

    worker_node = ray_silos.worker_node_ids[0]  # a node of the session's, never killed
    async with Cluster.connect(ray_silos.address, actors=app.ALL_ACTORS) as cluster:
        membership = cluster._caller._membership
        work = Workload(cluster, key, accounts=1000)
        owners_before = {r.actor_id: membership.ring.owner(r.actor_id) for r in work.refs}
        running = asyncio.ensure_future(work.run())
        await work.until(300)
        name, extra = await _start_extra_silo(worker_node, 3)
        try:
            await wait_for_active(cluster, name)
            await work.until(work.acknowledged() + 500)
            work.stop.set()
            await running
            moved = sum(1 for a, o in owners_before.items() if membership.ring.owner(a) != o)
            assert work.failed == 0, "a join must not fail calls"
            share = moved / len(owners_before)
            assert 0.1 <= share <= 0.4, share  # about 1/N with N = silos after the join
            await work.verify()
        finally:
            work.stop.set()
            await asyncio.gather(running, return_exceptions=True)
            await extra.leave.remote()  # the session's later tests expect its three silos
            await wait_until(lambda: name not in membership.view.active(), f"{name} to leave")
            await extra.stop.remote()
            ray.kill(extra)


async def test_silo_killed_during_transfers_every_transfer_is_all_or_nothing(
    ray_silos: Any, ray_transport: str, key: Any
) -> None:
    """Transfers between accounts spread over four silos, coordinated by the client and by
    silos; the silo hosting some participants (and coordinating some commits) is killed twice,
    mid-workload. Money is conserved and no transfer is half-applied."""
    import ray

    from raygrain.actors import TransactionAbortedError, TransactionInDoubtError
    from tests.app import InsufficientFunds, Vault

    worker_node = ray_silos.worker_node_ids[0]
    async with Cluster.connect(
        ray_silos.address, transport=ray_transport, actors=app.ALL_ACTORS
    ) as cluster:
        vaults = [cluster.get(Vault, key(str(i))) for i in range(24)]
        await asyncio.gather(*(v.deposit(1000) for v in vaults))
        acknowledged: dict[int, tuple[int, int]] = {}
        failed = 0
        stop = asyncio.Event()

        async def worker(w: int) -> None:
            nonlocal failed
            rng = random.Random(w)
            n = 0
            while not stop.is_set():
                n += 1
                transfer = w * 100_000 + n
                src, dst = rng.sample(range(len(vaults)), 2)

                async def block() -> None:
                    await vaults[src].with_timeout(10).add(transfer, -1)  # noqa: B023
                    await vaults[dst].with_timeout(10).add(transfer, 1)  # noqa: B023

                try:
                    if n % 2:
                        await cluster.transact(block, retries=3)
                    else:
                        await vaults[src].with_timeout(10).transfer_to(key(str(dst)), transfer, 1)
                except (
                    *RETRYABLE,
                    TransactionAbortedError,
                    TransactionInDoubtError,
                    InsufficientFunds,
                ):
                    failed += 1  # fate unknown or aborted: must be all or nothing either way
                    continue
                acknowledged[transfer] = (src, dst)

        async def until(count: int) -> None:
            await wait_until(lambda: len(acknowledged) >= count, f"{count} transfers", 120)

        workers = [asyncio.ensure_future(worker(w)) for w in range(10)]
        try:
            for round_ in range(2):
                name, extra = await _start_extra_silo(worker_node, 4 + round_)
                await wait_for_active(cluster, name)
                await until(len(acknowledged) + 100)
                ray.kill(extra, no_restart=True)  # the silo's process dies mid-commit
                await wait_for_death(cluster, name)
                await until(len(acknowledged) + 100)  # and service goes on
        finally:
            stop.set()
            await asyncio.gather(*workers, return_exceptions=True)
        # (A read waits for the locks of commits cut short to expire or resolve.)
        ledgers = await asyncio.gather(*(v.with_timeout(30).ledger() for v in vaults))
    check_transfers(ledgers, 1000, acknowledged, "after two silo kills")
    print(f"\n{len(acknowledged)} transfers acknowledged, {failed} failed or aborted, 2 kills")


async def test_controller_restarted_by_ray_carries_on(
    ray_silos: Any, ray_transport: str, key: Any
) -> None:
    import ray

    from raygrain.runtime.ray_host import CONTROLLER_NAME, namespace_of

    worker_node = ray_silos.worker_node_ids[0]  # a node of the session's, never killed
    name, extra = await _start_extra_silo(worker_node, 6)
    try:
        async with Cluster.connect(
            ray_silos.address, transport=ray_transport, actors=app.ALL_ACTORS
        ) as cluster:
            membership = cluster._caller._membership
            await wait_until(lambda: name in membership.view.active(), f"silo {name} to join", 60)
            work = Workload(cluster, key, accounts=300)
            running = asyncio.ensure_future(work.run())
            try:
                await work.until(300)
                version = membership.view.version
                # Ray starts the controller again with nothing in memory; the first calls it
                # gets are the long polls of silos and clients. It must go on from the stored
                # view.
                controller = ray.get_actor(CONTROLLER_NAME, namespace=namespace_of("default"))
                ray.kill(controller, no_restart=False)
                controller_killed = time.monotonic()
                await work.until(work.acknowledged() + 300)
                ray.kill(extra, no_restart=True)  # and a silo that dies after that is detected
                silo_killed = time.monotonic()
                await wait_for_death(cluster, name)
                assert membership.view.version > version
                await work.until(work.acknowledged() + 300)
            finally:
                work.stop.set()
                await bounded(running, "the workload's last deposits", 90)
            await bounded(work.verify(), "the accounts' snapshots", 60)
            times = [t for t, _ in work.failed_at]
            after = [round(t - silo_killed, 1) for t in times if t >= silo_killed]
            around = [t for t in times if controller_killed <= t < silo_killed]
            print(
                f"\ncontroller restarted: failures {dict(work.failures)}; {len(around)} in the "
                f"{silo_killed - controller_killed:.1f} s from the controller's kill to the "
                f"silo's, {len(after)} after the silo's (the last {max(after, default=0)} s "
                "after it)"
            )
            # No call may hang to its deadline (an ActorCallTimeout): calls that a silo
            # forwarded to the silo killed here used to, while views differed
            # (tests/runtime/test_forwarding).
            work.bound_failures(since=controller_killed)
    finally:
        ray.kill(extra, no_restart=True)  # (again: the session's later tests must not see it)


async def test_a_silo_joins_through_the_standby_while_the_controller_is_away(
    ray_silos: Any,
) -> None:
    """The controller's process stalls (SIGSTOP: it neither answers nor dies, so nothing
    returns until we let it go on); the standby leads, and a silo that starts meanwhile joins
    through it instead of waiting for the controller. Its start used to wait for the
    controller to answer (and failed outright when the call was in flight as Ray restarted
    it). On the default transport only: the client's transport plays no part."""
    import os
    import signal

    import ray

    from raygrain.runtime.kernel import view_from_wire
    from raygrain.runtime.ray_host import CONTROLLER_NAME, STANDBY_NAME, namespace_of

    namespace = namespace_of("default")
    controller = ray.get_actor(CONTROLLER_NAME, namespace=namespace)
    standby = ray.get_actor(STANDBY_NAME, namespace=namespace)
    pids: list[int] = []

    async def controller_answers() -> bool:  # (Ray may still be restarting it: a test before)
        try:
            pids.append(await controller.pid.remote())
        except ray.exceptions.ActorUnavailableError:
            await asyncio.sleep(0.2)
        return bool(pids)

    await wait_until(controller_answers, "the controller to answer", 60)
    pid = pids[0]
    async with Cluster.connect(ray_silos.address, actors=app.ALL_ACTORS) as cluster:
        name, extra = "", None
        os.kill(pid, signal.SIGSTOP)
        try:

            async def standby_leads() -> bool:
                return bool(await standby.guard.remote())

            await wait_until(standby_leads, "the standby to lead", 30)
            name, extra = await _start_extra_silo(ray_silos.node_ids[0], 8)  # bounded: 60 s
            led = view_from_wire(await bounded(standby.get_view.remote(), "the standby's view"))
            assert name in led.active(), f"{name} joined, yet not in the standby's view"
        finally:
            os.kill(pid, signal.SIGCONT)
        try:
            # The controller, back, reads the view the standby stored: the silo is in it.
            membership = cluster._caller._membership
            await wait_until(lambda: name in membership.view.active(), f"{name} in the view", 60)
            await cluster.get(Chain, "after-a-join-through-the-standby").ping()
        finally:
            if extra is not None:
                ray.kill(extra, no_restart=True)
        await wait_for_death(cluster, name)  # the session's deployment as it was


async def test_standby_controller_declares_a_silo_dead_while_the_controller_is_away(
    ray_silos: Any, key: Any, tmp_path: Any
) -> None:
    """The controller's process and a silo die at once: the standby (in a process of its own
    on the head node) takes over and declares the silo dead, so detection does not wait for
    Ray to restart the controller. The controller is killed for good here, so that only the
    standby can have done it; in a deployment of its own (on the session's Ray), which that
    leaves without its controller. On the default (direct) transport only: which controller
    leads does not depend on the client's transport."""
    import ray

    from raygrain.runtime.ray_host import CONTROLLER_NAME, STANDBY_NAME, namespace_of

    namespace = namespace_of("standby-test")
    async with Cluster.ray(
        actors=app.ALL_ACTORS,
        address=ray_silos.address,
        name="standby-test",
        storage=f"sqlite:///{tmp_path}/state.db",
        deactivation_timeout=2.0,
    ) as cluster:
        await wait_for_silos(cluster, 3)
        membership = cluster._caller._membership
        worker = ray_silos.worker_node_ids[0][:12]
        victim = next(n for n in membership.view.active() if worker in n)
        work = Workload(cluster, key, accounts=300)
        running = asyncio.ensure_future(work.run())
        await work.until(200)
        killed_at = time.monotonic()
        ray.kill(ray.get_actor(CONTROLLER_NAME, namespace=namespace), no_restart=True)
        ray.kill(ray.get_actor(victim, namespace=namespace), no_restart=True)
        await wait_for_death(cluster, victim)
        standby = ray.get_actor(STANDBY_NAME, namespace=namespace)
        assert victim in [d["silo"] for d in await standby.death_log.remote()]
        await work.until(work.acknowledged() + 200)  # service goes on under the standby
        work.stop.set()
        await running
        await work.verify()
        work.bound_failures(since=killed_at)
