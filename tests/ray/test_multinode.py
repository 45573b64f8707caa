"""Ray silos on a 3-node ray.cluster_utils cluster: placement over every node, graceful
handover without losing calls or writes, and user code from outside the repository."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from raygrain.actors import UnknownActorTypeError, UnknownMethodError
from raygrain.runtime import Cluster
from raygrain.runtime.kernel import DEFAULT_GC_THRESHOLD, DEFAULT_SWITCH_INTERVAL
from tests import app
from tests.app import BankAccount, Chain
from tests.helpers import check_oversized_messages, wait_for_active, wait_until

pytestmark = pytest.mark.ray


async def test_actors_spread_over_every_node(ray_silos: Any, ray_transport: str, key: Any) -> None:
    async with Cluster.connect(
        ray_silos.address, transport=ray_transport, actors=app.ALL_ACTORS
    ) as cluster:
        pids = await asyncio.gather(*(cluster.get(Chain, key(str(i))).where() for i in range(60)))
        stats = await cluster.stats()
    # Every node of the session hosts some of the 60 (another test's extra silo may add more).
    assert len(set(pids)) >= 3
    assert set(ray_silos.node_ids) <= {s["node_id"] for s in stats if s["activations"] > 0}


async def test_silo_processes_run_with_the_young_threshold_raised_and_a_short_switch_interval(
    ray_silos: Any,
) -> None:
    """A silo's process collects its young generation every DEFAULT_GC_THRESHOLD objects, not
    Python's 700 (runtime/kernel/_collector.py); the driver's own stays as it was."""
    before = gc.get_threshold(), sys.getswitchinterval()
    async with Cluster.connect(ray_silos.address, actors=app.ALL_ACTORS) as cluster:
        thresholds = await cluster.get(app.Worker, "gc").gc_thresholds()
        switch_interval = await cluster.get(app.Worker, "gc").switch_interval()
    assert thresholds[0] == DEFAULT_GC_THRESHOLD
    # And its switch interval is the silos' (runtime/kernel/_switching.py), not Python's 5 ms.
    assert switch_interval == DEFAULT_SWITCH_INTERVAL
    assert (gc.get_threshold(), sys.getswitchinterval()) == before  # (a client hosts no silo)


async def test_graceful_stop_mid_workload_loses_no_call_and_no_write(
    ray_silos: Any, ray_transport: str, key: Any
) -> None:
    import ray

    from raygrain.runtime.kernel import SiloOptions
    from raygrain.runtime.ray_host import RayLaunch, create_silo

    worker_node = ray_silos.worker_node_ids[1]  # a node of the session's, never killed
    launch = RayLaunch(tuple(app.ALL_ACTORS), 1, None)
    name, extra = create_silo(worker_node, 1, launch, SiloOptions(deactivation_timeout=2.0))
    await extra.start.remote()
    async with Cluster.connect(
        ray_silos.address, transport=ray_transport, actors=app.ALL_ACTORS
    ) as cluster:
        await wait_for_active(cluster, name)
        accounts = [cluster.get(BankAccount, key(f"acct{i}")) for i in range(200)]
        acknowledged: Counter[str] = Counter()
        rng = random.Random(7)
        stop = asyncio.Event()

        async def depositor() -> None:
            while not stop.is_set():
                account = rng.choice(accounts)
                await account.deposit(1)  # any exception fails the test: no call may be lost
                acknowledged[str(account.actor_id.key)] += 1

        workers = [asyncio.ensure_future(depositor()) for _ in range(20)]
        await wait_until(lambda: sum(acknowledged.values()) >= 400, "400 deposits", 120)
        hosted_before = (await extra.stats.remote())["activations"]
        await extra.leave.remote()  # hand over mid-workload
        after_leave = sum(acknowledged.values())
        await wait_until(
            lambda: sum(acknowledged.values()) >= after_leave + 400, "400 more deposits", 120
        )
        hosted_after = (await extra.stats.remote())["activations"]
        stop.set()
        await asyncio.gather(*workers)
        membership = cluster._caller._membership
        await wait_until(lambda: name not in membership.view.active(), f"{name} to leave")
        await extra.stop.remote()
        ray.kill(extra)
        balances = await asyncio.gather(*(a.balance() for a in accounts))
    assert hosted_before > 0 and hosted_after == 0
    found = {str(a.actor_id.key): b for a, b in zip(accounts, balances, strict=True) if b}
    assert found == dict(acknowledged)
    assert "-1-" in name


async def test_oversized_message_is_refused_with_the_configured_limit(
    ray_silos: Any, ray_transport: str
) -> None:
    async with Cluster.connect(
        ray_silos.address,
        transport=ray_transport,
        actors=app.ALL_ACTORS,
        max_message_bytes=64 * 1024,
    ) as cluster:
        # (The silos keep the limit they were launched with: only arguments are checked here.)
        await check_oversized_messages(cluster, 64 * 1024, results=False)


async def test_client_with_different_actor_classes_gets_clear_errors(
    ray_silos: Any, ray_transport: str
) -> None:
    from raygrain.actors import Actor

    class Newer(Actor[None], name="test.Chain"):  # same name, a method the silos lack
        async def brand_new(self) -> str:
            return "never runs"

    class Elsewhere(Actor[None], name="test.OnlyOnTheClient"):
        async def ping(self) -> str:
            return "never runs"

    async with Cluster.connect(
        ray_silos.address, transport=ray_transport, actors=[Newer, Elsewhere]
    ) as cluster:
        with pytest.raises(UnknownMethodError, match="test.Chain.brand_new"):
            await cluster.get(Newer, "k").brand_new()
        with pytest.raises(UnknownActorTypeError, match="test.OnlyOnTheClient"):
            await cluster.get(Elsewhere, "k").ping()
        assert await cluster.ref("test.Chain", "k").ping() == "pong from k"  # silos serve on


@pytest.mark.slow
def test_user_module_outside_the_repo_runs_on_ray_silos(tmp_path: Path) -> None:
    # A user's own package in a temp dir, a script that starts its own local Ray.
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "__init__.py").write_text("")
    (tmp_path / "shop" / "carts.py").write_text(
        textwrap.dedent("""
        from dataclasses import dataclass, field
        from raygrain.actors import Actor, read_only

        @dataclass
        class Item:
            sku: str
            qty: int = 1

        @dataclass
        class CartState:
            items: list[Item] = field(default_factory=list)

        class Cart(Actor[CartState], name="shop.Cart"):
            async def add(self, item: Item) -> int:
                self.state.items.append(item)
                return sum(i.qty for i in self.state.items)

            @read_only
            async def items(self) -> list[Item]:
                return self.state.items
    """)
    )
    (tmp_path / "main.py").write_text(
        textwrap.dedent(f"""
        import asyncio
        from raygrain.runtime import Cluster
        from shop.carts import Cart, Item

        async def main():
            async with Cluster.ray(actors=[Cart], storage="sqlite:///{tmp_path}/shop.db") as c:
                cart = c.get(Cart, "alice")
                print(await cart.add(Item("apple", 2)), await cart.add(Item("pear")))
                print(await cart.items())

        asyncio.run(main())
    """)
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "main.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[-2] == "2 3"
    assert lines[-1] == "[Item(sku='apple', qty=2), Item(sku='pear', qty=1)]"
