"""A projection whose node dies resumes on a survivor from its committed offsets, and its read
model ends equal to a fold of the whole log (runtime/events/ on a real multi-node Ray)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from raygrain import ActorId, Cluster
from raygrain.storage import SqliteStorage
from tests.events_app import RAY_PROJECTIONS, Account
from tests.helpers import RETRYABLE, extra_node, wait_for_death

pytestmark = pytest.mark.ray

CATEGORY = Account.__actor_options__.name
ACCOUNTS = 40


async def test_killing_the_node_of_a_projection_moves_it_with_its_offsets(
    ray_silos: Any, tmp_path: Any
) -> None:
    db = tmp_path / "es.db"
    # Its own deployment on the session's Ray, and a node of its own to kill: every node of
    # this machine opens the same SQLite file.
    cluster = Cluster.ray(
        actors=[Account, *RAY_PROJECTIONS],
        name="es-failover",
        address=ray_silos.address,
        storage=f"sqlite:///{db}",
    )
    async with cluster, extra_node(ray_silos, cluster) as (node, doomed):
        membership = cluster._caller._membership
        moving = [
            p
            for p in RAY_PROJECTIONS
            if membership.ring.owner(ActorId(p.__actor_options__.name, "main")) == doomed
        ]
        assert moving, "some projection must live on the node that dies"
        watched = moving[0].of(cluster)
        acked: dict[int, int] = {}
        stop = asyncio.Event()

        async def write(key: int) -> None:
            account = cluster.get(Account, f"k{key}")
            while not stop.is_set():
                with contextlib.suppress(*RETRYABLE):
                    written = await account.deposit(1)
                    acked[key] = written.version

        writers = [asyncio.create_task(write(key)) for key in range(ACCOUNTS)]
        try:
            # The projection has committed part of the log on the doomed node.
            while (await watched.positions())[CATEGORY] < 200:
                await watched.read("x", {CATEGORY: 200}, 30.0)
            before = (await watched.positions())[CATEGORY]
            ray_silos.nodes.remove_node(node, allow_graceful=False)
            await wait_for_death(cluster, doomed)
            moved = sum(acked.values())
            while sum(acked.values()) < moved + 200:  # writes go on meanwhile
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.gather(*writers)
        async with SqliteStorage(db) as storage:
            head = await storage.head(CATEGORY)
            versions = {
                key: len(await storage.read_stream(f"{CATEGORY}/k{key}")) for key in range(ACCOUNTS)
            }
        # Resumed on a survivor, from its committed offset: it catches up to the head.
        after = await watched.read("x", {CATEGORY: head}, 60.0)
        assert after.positions[CATEGORY] >= head > before
        for key in range(ACCOUNTS):
            assert versions[key] >= acked.get(key, 0), f"k{key} lost acknowledged events"
            row = await watched.read(f"{CATEGORY}/k{key}")
            assert (row.value or 0) == versions[key], f"k{key}: applied {row.value}"
