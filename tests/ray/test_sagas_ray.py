"""Sagas on Ray: the node hosting running sagas is killed; they finish on the survivors.

The test adds a node (and so a silo) to the session's three, starts sagas of which half live on
the new silo, kills that node once each of them has completed a step and is working in the
next, and then calls no saga: the saga index's reminders wake them on their new owners. Every
saga completes, and every step acted exactly once, read from the participants' state.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from raygrain import ActorId, Cluster, SagaPhase
from tests import app
from tests.helpers import extra_node, json_document, wait_for_death, wait_until
from tests.saga_app import STEPS, Ledger, Plan, Trip

pytestmark = pytest.mark.ray

DOOMED = 6  # sagas on the silo that dies
OTHERS = 6


async def test_sagas_on_a_killed_node_finish_on_the_survivors(
    ray_silos: Any, key: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from raygrain.runtime.cli import main

    async with (
        Cluster.connect(ray_silos.address, actors=app.ALL_ACTORS) as cluster,
        extra_node(ray_silos, cluster) as (node, name),
    ):
        membership = cluster._caller._membership
        ring = membership.ring
        candidates = [key(f"trip-{n}") for n in range(400)]
        on_doomed = [
            k for k in candidates if ring.owner(ActorId(Trip.__actor_options__.name, k)) == name
        ]
        elsewhere = [k for k in candidates if k not in on_doomed]
        sagas = on_doomed[:DOOMED] + elsewhere[:OTHERS]
        assert len(sagas) == DOOMED + OTHERS, "the new silo must own some sagas"
        plan = Plan(delay=0.8)  # each step works for a while after acting
        await asyncio.gather(*(cluster.get(Trip, k).start(plan) for k in sagas))
        running: list[bool] = []

        async def doomed_under_way() -> bool:
            statuses = [await cluster.get(Trip, k).status() for k in sagas[:DOOMED]]
            running[:] = [s.phase is SagaPhase.RUNNING for s in statuses]
            return all(s.completed for s in statuses) and sum(running) >= DOOMED // 2

        await wait_until(doomed_under_way, "the doomed sagas to complete a step", 60)
        ray_silos.nodes.remove_node(node, allow_graceful=False)
        await wait_for_death(cluster, name)

        async def all_completed() -> bool:
            try:
                listed = await Trip.list_sagas(cluster)
            except Exception:  # (an index shard on the dead silo, before the view moved it)
                return False
            return all(listed.get(k) is SagaPhase.COMPLETED for k in sagas)

        await wait_until(all_completed, "every saga to complete on the survivors", 120)
        for saga in sagas:
            status = await cluster.get(Trip, saga).status()
            assert status.phase is SagaPhase.COMPLETED, status
            books = await cluster.get(Ledger, saga).books()
            assert sorted(books.booked) == sorted(STEPS), (saga, books)
            assert all(books.events.count(f"do {s}") == 1 for s in STEPS), (saga, books.events)
        print(f"\n{sum(running)} of {DOOMED} sagas on the killed node were running when it died")
        # What an operator sees of them with the CLI, on the deployment: all completed, none
        # asking for attention.
        capsys.readouterr()
        listing = ["sagas", "--address", ray_silos.address, "--type", "sagatest.Trip", "--json"]
        assert await asyncio.to_thread(main, [*listing, "--phase", "all"]) == 0
        shown = {row["saga"]: row["phase"] for row in json_document(capsys.readouterr().out)}
        assert all(shown.get(k) == SagaPhase.COMPLETED.value for k in sagas), shown
        assert await asyncio.to_thread(main, listing) == 0
        assert json_document(capsys.readouterr().out) == []
