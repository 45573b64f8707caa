"""Durable streams when the node hosting their consumers dies (a ray.cluster_utils node).

A node is added to the session's three; streams are chosen whose consumers the ring places on
its silo. A publisher keeps publishing to them (each event with its own id, retried until
acknowledged: a retry after an unknown outcome appends nothing) while the node is killed. The
consumers come back on the survivors from their committed positions, and each consumer's state
ends up equal to a fold of its stream's log: every number once, in position order. And a
client's observer gets an actor's pushes across the direct data plane.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from raygrain.actors import ActorId
from raygrain.runtime import Cluster
from tests import app
from tests.helpers import RETRYABLE, extra_node, wait_for_death, wait_until
from tests.stream_app import Announcer, OrderConsumer

pytestmark = pytest.mark.ray

STREAMS = 4


class Publisher:
    """One task per stream, publishing 1, 2, 3, ... until told to stop."""

    def __init__(self, cluster: Cluster, keys: list[str]) -> None:
        self.cluster = cluster
        self.acked = {key: 0 for key in keys}
        self.retries = 0
        self.stop = asyncio.Event()

    async def run(self) -> None:
        await asyncio.gather(*(self._publish(key) for key in self.acked))

    async def _publish(self, key: str) -> None:
        stream = self.cluster.streams.get("orders", key)
        while not self.stop.is_set():
            n = self.acked[key] + 1
            try:
                position = await stream.publish(n, event_id=f"{key}:{n}")
            except RETRYABLE:
                self.retries += 1  # fate unknown: publish it again (same id)
                await asyncio.sleep(0.05)
                continue
            assert position == n, f"{key}: event {n} at position {position}"
            self.acked[key] = n

    async def until(self, total: int) -> None:
        await wait_until(lambda: sum(self.acked.values()) >= total, f"{total} publishes")


async def test_consumers_resume_on_survivors_and_fold_the_log(ray_silos: Any, key: Any) -> None:
    async with (
        Cluster.connect(ray_silos.address, actors=app.ALL_ACTORS) as cluster,
        extra_node(ray_silos, cluster) as (node, name),
    ):
        membership = cluster._caller._membership
        candidates = (key(f"stream-{i}") for i in range(10_000))
        keys = [
            k
            for k in candidates
            if membership.ring.owner(ActorId("test.streams.OrderConsumer", k)) == name
        ][:STREAMS]
        assert len(keys) == STREAMS, "some consumers must live on the node that dies"
        publisher = Publisher(cluster, keys)
        running = asyncio.ensure_future(publisher.run())
        await publisher.until(40)
        for k in keys:  # consumed on the doomed node before it dies
            await wait_until(
                lambda k=k: _consumed(cluster, k, 2), f"{k} to be consumed on {name}", 60
            )
        killed_at = time.monotonic()
        ray_silos.nodes.remove_node(node, allow_graceful=False)
        await wait_for_death(cluster, name)
        await publisher.until(sum(publisher.acked.values()) + 40)
        publisher.stop.set()
        await running
        for k in keys:
            last = publisher.acked[k]
            await wait_until(
                lambda k=k, last=last: _consumed(cluster, k, last), f"{k} to reach {last}", 90
            )
        back_after = time.monotonic() - killed_at
        for k in keys:
            consumer = cluster.get(OrderConsumer, k)
            seen = await consumer.seen()
            fold = list(range(1, publisher.acked[k] + 1))  # the log: number n at position n
            assert [s[2] for s in seen] == fold, f"{k}: positions {[s[2] for s in seen]}"
            assert [s[3] for s in seen] == fold, f"{k}: events {[s[3] for s in seen]}"
            assert set((await consumer.applied()).values()) == {1}
            assert membership.ring.owner(consumer.actor_id) != name
        print(
            f"\nstreams after a node kill: {STREAMS} streams, {sum(publisher.acked.values())} "
            f"events, consumers caught up {back_after:.2f} s after the kill; "
            f"{publisher.retries} publishes retried"
        )


async def test_a_client_observer_on_ray_gets_pushes(ray_silos: Any, key: Any) -> None:
    heard: list[tuple[str, str]] = []

    class Ear:
        def heard(self, who: str, text: str) -> None:
            heard.append((who, text))

    async with Cluster.connect(ray_silos.address, actors=app.ALL_ACTORS) as cluster:
        announcer = cluster.get(Announcer, key("town-crier"))
        await announcer.join(cluster.streams.observer(Ear()))
        for n in range(5):
            assert await announcer.announce(f"news {n}") == 1
        await wait_until(lambda: len(heard) == 5, "5 pushes to reach the client", 60)
        assert heard == [(key("town-crier"), f"news {n}") for n in range(5)]


async def _consumed(cluster: Cluster, key: str, count: int) -> bool:
    try:
        return len(await cluster.get(OrderConsumer, key).seen()) >= count
    except RETRYABLE:
        return False
