"""Reminders on Ray: a node hosting actors with reminders is killed, and their reminders go on
from the survivors on the original schedule, with no occurrence delivered twice except the one
documented window (a tick delivered just before the kill whose ack was not stored yet); and a
whole Ray cluster stops and a new one starts on the same store, and the reminder goes on."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from raygrain.actors import ActorCallTimeout, SiloUnavailableError, StorageError
from raygrain.runtime import Cluster
from tests import app
from tests.app import Alarm
from tests.helpers import extra_node, wait_for_death

pytestmark = [pytest.mark.ray, pytest.mark.slow]

PERIOD = 0.5
ROOT = Path(__file__).resolve().parent.parent.parent


async def _ticks(ref: Any, bound: float = 60.0) -> list[float]:
    deadline = time.monotonic() + bound
    while True:
        try:
            return list(await ref.with_timeout(10).ticks())
        except (SiloUnavailableError, ActorCallTimeout, StorageError) as error:
            # The owner is moving: ask again.
            assert time.monotonic() < deadline, f"{ref.actor_id}: no answer to ticks(): {error!r}"
            await asyncio.sleep(0.1)


async def _until(ref: Any, predicate: Any, limit: float = 90.0) -> list[float]:
    deadline = time.monotonic() + limit
    while True:
        ticks = await _ticks(ref)
        if predicate(ticks):
            return ticks
        assert time.monotonic() < deadline, f"{ref.actor_id}: stuck at {ticks[-3:]}"
        await asyncio.sleep(0.1)


def _check_schedule(first: float, ticks: list[float], killed_at: float | None) -> None:
    for tick in ticks:  # every tick is one occurrence of the original schedule
        occurrence = (tick - first) / PERIOD
        assert abs(occurrence - round(occurrence)) < 1e-3, (first, tick)
    assert ticks == sorted(ticks), ticks
    repeated = [t for t, n in Counter(ticks).items() if n > 1]
    if killed_at is None:
        assert not repeated, f"a survivor's reminder ticked twice: {repeated}"
    else:
        # The documented window: the tick the dead silo delivered right before it died.
        assert len(repeated) <= 1, f"more than one occurrence ticked twice: {repeated}"
        assert all(Counter(ticks)[t] == 2 and t <= killed_at for t in repeated), repeated


async def test_a_reminder_ticks_lists_and_stops_on_ray(ray_silos: Any, key: Any) -> None:
    async with Cluster.connect(ray_silos.address, actors=app.ALL_ACTORS) as cluster:
        alarm = cluster.get(Alarm, key("basic"))
        first = await alarm.arm(0.3)
        ticks = await _until(alarm, lambda t: len(t) >= 3)
        assert ticks[:3] == pytest.approx([first, first + 0.3, first + 0.6])
        assert await alarm.armed() == ["alarm"]
        assert await alarm.disarm() is True
        stopped_at = len(await alarm.ticks())
        assert await alarm.armed() == []
        # Three periods of another alarm later, the first has not ticked again.
        other = cluster.get(Alarm, key("other"))
        await other.arm(0.3)
        await _until(other, lambda t: len(t) >= 3)
        assert len(await alarm.ticks()) == stopped_at
        assert min(await alarm.lateness()) >= 0


async def test_reminders_fire_on_from_a_survivor_when_their_node_dies(
    ray_silos: Any, key: Any
) -> None:
    async with (
        Cluster.connect(ray_silos.address, actors=app.ALL_ACTORS) as cluster,
        extra_node(ray_silos, cluster) as (node, name),
    ):
        ring = cluster._caller._membership.ring
        refs = [cluster.get(Alarm, key(f"alarm-{i}")) for i in range(200)]
        doomed = [r for r in refs if ring.owner(r.actor_id) == name][:10]
        others = [r for r in refs if ring.owner(r.actor_id) != name][:10]
        assert doomed, "some alarms must live on the silo that dies"
        alarms = doomed + others
        firsts = await asyncio.gather(*(r.arm(PERIOD) for r in alarms))
        await asyncio.gather(*(_until(r, lambda t: len(t) >= 3) for r in doomed))
        killed_at = time.time()
        ray_silos.nodes.remove_node(node, allow_graceful=False)
        await wait_for_death(cluster, name)
        resumed = await asyncio.gather(
            *(_until(r, lambda t: bool(t) and t[-1] > killed_at + PERIOD) for r in doomed)
        )
        back_after = time.time() - killed_at
        for index, ref in enumerate(alarms):
            dies = index < len(doomed)
            _check_schedule(firsts[index], await _ticks(ref), killed_at if dies else None)
            assert min(await ref.lateness()) >= 0, "a tick arrived before its time"
        late = [
            next(t for t in ticks if t > killed_at) for ticks in resumed
        ]  # the first tick each doomed alarm got after the kill
        print(
            f"\nreminders after a node kill: all {len(doomed)} resumed within {back_after:.2f} s;"
            f" first post-kill occurrences {min(late) - killed_at:.2f}..{max(late) - killed_at:.2f}"
            " s after the kill"
        )


_RESTART_SCRIPT = """
import asyncio, sys, time
from raygrain import Actor, ReminderSettings
from raygrain.runtime import Cluster
from alarms import Alarm

async def main(server_storage, want):
    async with Cluster.ray(
        actors=[Alarm], server_storage=server_storage,
        reminders=ReminderSettings(minimum_period=0.2),
    ) as cluster:
        alarm = cluster.get(Alarm, "restart")
        if want == 3:
            print("first", await alarm.arm(0.5))
        deadline = time.monotonic() + 120
        while len(ticks := await alarm.ticks()) < want:
            assert time.monotonic() < deadline, ticks
            await asyncio.sleep(0.1)
        print("ticks", *ticks)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""

_ALARMS = """
from dataclasses import dataclass, field
from raygrain import Actor

@dataclass
class Ticks:
    ticks: list = field(default_factory=list)

class Alarm(Actor[Ticks], name="restart.Alarm"):
    async def arm(self, period):
        return (await self.reminders.register("alarm", due=period, period=period)).first_tick

    async def on_reminder(self, name, tick):
        self.state.ticks.append(tick.scheduled)

    async def ticks(self):
        return list(self.state.ticks)
"""


@pytest.mark.fresh_ray
def test_reminders_go_on_after_the_whole_ray_cluster_restarts(tmp_path: Path) -> None:
    (tmp_path / "alarms.py").write_text(_ALARMS)
    (tmp_path / "main.py").write_text(_RESTART_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    store = f"sqlite:///{tmp_path / 'state.db'}"

    def run(want: int) -> list[str]:
        done = subprocess.run(
            [sys.executable, "main.py", store, str(want)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip().splitlines()

    first_run = run(3)
    first = float(first_run[0].split()[1])
    before = [float(t) for t in first_run[-1].split()[1:]]
    after = [float(t) for t in run(len(before) + 2)[-1].split()[1:]]  # a new Ray, same store
    assert after[: len(before)] == before
    occurrences = [(t - first) / 0.5 for t in after]
    assert occurrences == sorted(set(occurrences)), "an occurrence ticked twice"
    assert all(abs(n - round(n)) < 1e-3 for n in occurrences), occurrences
