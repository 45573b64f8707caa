"""The child process of tests/ray/test_postgres_ray.py: raygrain on a 3-node Ray cluster of its
own with ``storage="postgresql://..."``, silos killed mid-workload.

    python -m tests.ray.postgres_node_kill STORAGE_URL

A process of its own because the test session's Ray (the ``ray_silos`` fixture) is already a
raygrain deployment with a storage server, and one process holds one Ray connection. Prints one
JSON line with what it saw; any failed check ends it with a traceback and a non-zero exit.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections import Counter, defaultdict
from typing import Any

import ray
from ray.cluster_utils import Cluster as RayTestCluster

from raygrain.actors import (
    ActorCallTimeout,
    ActorId,
    InconsistentStateError,
    SiloUnavailableError,
    StorageError,
    decode_state,
)
from raygrain.runtime import Cluster
from raygrain.runtime.ray_host import ensure_ray
from raygrain.storage import open_storage
from tests.app import Account, BankAccount

ACCOUNTS = 300
WORKERS = 20
PHASE_TIMEOUT = 120.0  # seconds for a phase of the workload, on a busy machine
RETRYABLE = (SiloUnavailableError, ActorCallTimeout, StorageError, InconsistentStateError)


class Workload:
    """Deposits of unique amounts: every acknowledged one must be found again, once."""

    def __init__(self, cluster: Cluster) -> None:
        self.refs = [cluster.get(BankAccount, f"pg-{i}") for i in range(ACCOUNTS)]
        self.acked: dict[str, set[int]] = defaultdict(set)
        self.failed = 0
        self.errors: Counter[str] = Counter()
        self.next_amount = 1
        self.stop = asyncio.Event()
        self.rng = random.Random(7)

    async def deposit(self, ref: Any) -> bool:
        amount, self.next_amount = self.next_amount, self.next_amount + 1
        try:
            await ref.with_timeout(10).deposit(amount)
        except RETRYABLE as exc:
            self.failed += 1  # fate unknown: may or may not be applied, never half
            self.errors[type(exc).__name__] += 1
            return False
        self.acked[str(ref.actor_id.key)].add(amount)
        return True

    async def run(self) -> None:
        async def worker() -> None:
            while not self.stop.is_set():
                await self.deposit(self.rng.choice(self.refs))

        await asyncio.gather(*(worker() for _ in range(WORKERS)))

    def acknowledged(self) -> int:
        return sum(len(amounts) for amounts in self.acked.values())

    async def until(self, count: int, phase: str) -> None:
        """Wait for ``count`` acknowledged writes; fail naming ``phase`` if they never come."""

        async def reached() -> None:
            while self.acknowledged() < count:
                await asyncio.sleep(0.02)

        try:
            await asyncio.wait_for(reached(), PHASE_TIMEOUT)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"{phase}: {self.acknowledged()} of {count} writes acknowledged after "
                f"{PHASE_TIMEOUT:g}s ({self.failed} failed retryably: {dict(self.errors)})"
            ) from None


async def _live_silos(cluster: Cluster, count: int) -> None:
    membership = cluster._caller._membership
    while len(membership.ring) != count:
        await membership.wait_for_view(membership.view.version + 1)


async def _gone(cluster: Cluster, dead: set[str]) -> None:
    """Wait until none of ``dead`` is on the ring. (Not until some number of silos is left:
    the controller gives a live node whose silo died a new one, so the head node's comes back,
    perhaps before the other dead silo is declared dead, and the ring need never shrink to 1.)"""
    membership = cluster._caller._membership
    while dead & set(membership.ring.silos):
        await membership.wait_for_view(membership.view.version + 1)


async def main(url: str) -> dict[str, Any]:
    began = time.monotonic()
    # (No dashboard: the session's Ray, started beside this one by the other test worker,
    # holds its port, and a head that cannot bind it may time out starting.)
    nodes = RayTestCluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    try:
        workers = [nodes.add_node(num_cpus=1) for _ in range(2)]
        nodes.wait_for_nodes()
        ensure_ray(nodes.address, local_code=True)
        head = ray.get_runtime_context().get_node_id()
        async with Cluster.ray(
            actors=[BankAccount], address=nodes.address, storage=url, deactivation_timeout=2.0
        ) as cluster:
            await _live_silos(cluster, 3)
            serving = time.monotonic()
            named = {entry["name"] for entry in ray.util.list_named_actors(all_namespaces=True)}
            assert not [n for n in named if "storage" in n], (
                f"a storage server was started: {named}"
            )
            silos = {n: h for n, h in cluster._backend.handles.items() if "silo" in n}  # type: ignore[attr-defined]
            on_head = [n for n in silos if head[:12] in n]
            on_worker = [n for n in silos if workers[0].node_id[:12] in n]
            assert len(on_head) == 1 and len(on_worker) == 1, sorted(silos)

            work = Workload(cluster)
            await asyncio.gather(*(work.deposit(r) for r in work.refs))  # activate everything
            running = asyncio.ensure_future(work.run())
            await work.until(work.acknowledged() + 300, "before the kill")
            killed_at = time.monotonic()
            # The launching side's silo dies, and a whole node with another silo.
            ray.kill(silos[on_head[0]], no_restart=True)
            nodes.remove_node(workers[0], allow_graceful=False)
            await asyncio.wait_for(_gone(cluster, {on_head[0], on_worker[0]}), PHASE_TIMEOUT)
            acknowledged_at_kill = work.acknowledged()
            # The survivor serves everything:
            await work.until(acknowledged_at_kill + 300, "after the kill")
            serving_again = time.monotonic() - killed_at
            ring_after = list(cluster._caller._membership.ring.silos)
            work.stop.set()
            await running
            snapshots = await asyncio.gather(*(r.snapshot() for r in work.refs))
            for ref, state in zip(work.refs, snapshots, strict=True):
                key, history = ref.actor_id.key, state.history
                assert len(history) == len(set(history)), f"{key}: a write applied twice"
                assert state.balance == sum(history), f"{key}: a half-applied write"
                missing = work.acked[str(key)] - set(history)
                assert not missing, f"{key}: acknowledged writes lost: {sorted(missing)[:5]}"
    finally:
        ray.shutdown()
        nodes.shutdown()
    # And straight from the database: every acknowledged deposit is there.
    store = open_storage(url)
    try:
        for ref in work.refs:
            key = ref.actor_id.key
            record = await store.read(ActorId(BankAccount.__actor_options__.name, key))
            stored = decode_state(record.data or b"", Account)
            assert work.acked[str(key)] <= set(stored.history), f"{key} lost writes"
    finally:
        await store.aclose()
    return {
        "acknowledged": work.acknowledged(),
        "acknowledged_at_kill": acknowledged_at_kill,
        "failed_retryably": work.failed,
        "serving_again_s": round(serving_again, 2),
        "silos_after": ring_after,
        "cluster_start_s": round(serving - began, 1),
        "workload_s": round(time.monotonic() - serving, 1),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1]))))
