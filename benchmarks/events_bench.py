"""Event sourcing: appends through event-sourced actors, projections, read-your-writes.

1. Appends: 1,000 concurrent writers, each calling its own event-sourced actor in a loop (one
   event per call, appended with its expected version before the reply), beside the same load
   on actors with per-turn state (one durable state write per call). SQLite, fsync on every
   commit; both sides group-commit. Both clusters stay up side by side and take short rounds
   in pairs, back to back (``benchmarks._measure.paired``): the ratio is the median pair's,
   with the pairs' quartiles (whole rounds seconds apart wandered from 0.63 to 0.86 between
   runs on a shared machine).
2. Under that load, with a projection following the feed: the events it applied per second,
   its lag (events behind the log's head, sampled every 20 ms) at p99, and the wait of a
   read-your-writes query (a command, then a read given its token) beside an eventual read.
3. Catch-up: a fresh projection reading the whole log from position 0, in events applied and
   committed per second, beside reading the same feed without applying anything.

    python -m raygrain.benchmarks.events_bench [--quick] [--dir DIRECTORY] [--load-seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raygrain.actors import Actor, read_only
from raygrain.benchmarks._measure import (
    Latencies,
    Measurement,
    Paired,
    Rounds,
    drive_for,
    figure,
    now,
    paired,
)
from raygrain.runtime import Cluster, EventSourcedActor, Projection, Rows
from raygrain.storage import SqliteStorage, StoredEvent

__all__ = ["run"]

TARGET_APPEND_RATIO = 0.8
TARGET_PROJECTION_PER_S = 20_000.0
TARGET_RYW_P99_MS = 50.0
PAIRS = 30  # pairs of append rounds
PAIR_SECONDS = 0.3
LOAD_SECONDS = 3.0  # the projection and the read-your-writes probes under load


@dataclass
class Tally:
    amount: int = 0


@dataclass
class Added:
    amount: int


class EventAccount(EventSourcedActor[Tally, Added], name="bench.EventAccount"):
    def apply(self, state: Tally, event: Added) -> Tally:
        state.amount += event.amount
        return state

    async def deposit(self, amount: int) -> int:
        self.raise_event(Added(amount))
        return self.version

    async def deposit_for_token(self, amount: int) -> Any:
        self.raise_event(Added(amount))
        return await self.confirm_events()

    @read_only
    async def balance(self) -> int:
        return self.state.amount


class StateAccount(Actor[Tally], name="bench.StateAccount"):
    async def deposit(self, amount: int) -> int:
        self.state.amount += amount
        return self.state.amount

    @read_only
    async def balance(self) -> int:
        return self.state.amount


class _Balances(Projection):
    async def when(self, event: Any, stored: StoredEvent, rows: Rows) -> None:
        key = stored.stream
        rows.put(key, await rows.get(key, 0) + event.amount)


class LiveBalances(_Balances, name="bench.LiveBalances", sources=[EventAccount]):
    pass


class CatchUpBalances(_Balances, name="bench.CatchUpBalances", sources=[EventAccount]):
    pass


async def _appends(
    events: SqliteStorage, states: SqliteStorage, writers: int, seconds: float, pairs: int
) -> tuple[Paired, dict[str, list[Measurement]]]:
    """Appends/s over durable writes/s, ``pairs`` pairs of rounds on two clusters up side by
    side, and each side's rounds."""
    async with (
        Cluster.local(actors=[EventAccount], silos=2, storage=events) as appending,
        Cluster.local(actors=[StateAccount], silos=2, storage=states) as writing,
    ):
        rounds: dict[str, list[Measurement]] = {"events": [], "state": []}

        async def side(cluster: Cluster, actor: type[Any], name: str) -> Callable[[], Any]:
            accounts = [cluster.get(actor, key) for key in range(writers)]
            await asyncio.gather(*(account.balance() for account in accounts))  # activate first

            async def measure() -> float:
                measured = await drive_for(
                    lambda target, _: accounts[target].deposit(1), writers, writers, seconds
                )
                rounds[name].append(measured)
                return measured[0]

            return measure

        appends = await side(appending, EventAccount, "events")
        writes = await side(writing, StateAccount, "state")
        return await paired(appends, writes, pairs), rounds


async def _under_load(storage: SqliteStorage, writers: int, seconds: float) -> dict[str, Any]:
    category = EventAccount.__actor_options__.name
    async with Cluster.local(
        actors=[EventAccount, LiveBalances], silos=2, storage=storage
    ) as cluster:
        accounts = [cluster.get(EventAccount, key) for key in range(writers)]
        await asyncio.gather(*(account.balance() for account in accounts))
        balances = LiveBalances.of(cluster)
        # The probes' accounts active, and the read model holding their rows, before the load
        # starts: their first round trip (an activation, a stream the projection has not seen)
        # is no read-your-writes wait under load, and ten of them were p99 of a few hundred.
        probes = [cluster.get(EventAccount, f"probe{index}") for index in range(10)]
        for account in probes:
            written = await account.deposit_for_token(1)
            await balances.read(written.stream, written, 30.0)
        start = await balances.positions()
        await balances.read("x", {category: await storage.head(category)}, 60.0)
        lags: list[int] = []
        ryw, eventual = Latencies(), Latencies()
        stop = now() + seconds

        async def sample_lag() -> None:
            while now() < stop:
                lags.append((await balances.lag())[category])
                await asyncio.sleep(0.02)

        async def probe(account: Any) -> None:
            while now() < stop:
                written = await account.deposit_for_token(1)
                started = now()
                await balances.read(written.stream, written, 30.0)
                ryw.add(now() - started)
                started = now()
                await balances.read(written.stream)
                eventual.add(now() - started)

        load = drive_for(lambda target, _: accounts[target].deposit(1), writers, writers, seconds)
        began = now()
        rate, _ = (
            await asyncio.gather(load, sample_lag(), *(probe(account) for account in probes))
        )[0]
        head = await storage.head(category)
        await balances.read("x", {category: head}, 60.0)
        drained = now() - began
        applied = head - start[category]
    return {
        "append_rate": rate,
        "applied_per_s": applied / drained,
        "lags": sorted(lags) or [0],
        "ryw": ryw,
        "eventual": eventual,
    }


async def _catch_up(storage: SqliteStorage) -> tuple[float, float, int]:
    category = EventAccount.__actor_options__.name
    head = await storage.head(category)
    started = now()
    position = 0
    while position < head:
        position = (await storage.read_category(category, position, 500))[-1].position
    read_rate = head / (now() - started)
    async with Cluster.local(
        actors=[EventAccount, CatchUpBalances], silos=1, storage=storage
    ) as cluster:
        started = now()
        await CatchUpBalances.of(cluster).read("x", {category: head}, 300.0)
        apply_rate = head / (now() - started)
    return apply_rate, read_rate, head


def _p99(samples: list[int]) -> float:
    return float(samples[min(len(samples) - 1, int(0.99 * len(samples)))])


async def run(
    quick: bool = False,
    smoke: bool = False,
    directory: str | None = None,
    load_seconds: float | None = None,
) -> list[dict[str, Any]]:
    writers = 50 if smoke else 200 if quick else 1000
    seconds = 0.1 if smoke else PAIR_SECONDS
    pairs = 1 if smoke else 4 if quick else PAIRS
    load_seconds = load_seconds or (0.2 if smoke else 0.5 if quick else LOAD_SECONDS)
    with tempfile.TemporaryDirectory(prefix="raygrain-bench-", dir=directory) as tmp:
        async with (
            SqliteStorage(Path(tmp) / "events.db", durability="fsync") as events,
            SqliteStorage(Path(tmp) / "state.db", durability="fsync") as states,
        ):
            ratio, rounds = await _appends(events, states, writers, seconds, pairs)
            load = await _under_load(events, writers, load_seconds)
            apply_rate, read_rate, logged = await _catch_up(events)
    appends, writes = Rounds(), Rounds()
    for side, measured in ((appends, rounds["events"]), (writes, rounds["state"])):
        for rate, latencies in measured:
            side.add(rate, latencies)
    ryw, eventual = load["ryw"].percentiles_ms(), load["eventual"].percentiles_ms()
    lag_p99 = _p99(load["lags"])
    return [
        figure(
            f"event appends/s through event-sourced actors, {writers} writers, fsync",
            appends.rate,
            writes.rate,
            "events/s",
            baseline_name="same load on actors with per-turn state (durable writes/s)",
            latency=appends.median_latencies().percentiles_ms(),
            baseline_latency=writes.median_latencies().percentiles_ms(),
            ratio=ratio.ratio,  # (the median pair's, not the ratio of the median rounds)
            pairs=len(ratio.ratios),
            paired_quartiles=list(ratio.quartiles),
            target=f">= {TARGET_APPEND_RATIO:g}x (the median pair)",
            meets_target=ratio.ratio >= TARGET_APPEND_RATIO,
        ),
        figure(
            "projection catch-up, events applied/s (SQLite)",
            apply_rate,
            read_rate,
            "events/s",
            baseline_name="reading the same feed without applying it",
            events=logged,
            applied_under_load_per_s=load["applied_per_s"],
            target=f">= {TARGET_PROJECTION_PER_S:,.0f}/s",
            meets_target=apply_rate >= TARGET_PROJECTION_PER_S,
        ),
        figure(
            f"read-your-writes wait p99 under {writers} writers",
            ryw.get("p99_ms", 0.0) or 1e-3,
            eventual.get("p99_ms", 0.0) or 1e-3,
            "ms",
            baseline_name="eventual read p99 (no token)",
            lower_is_better=True,
            latency=ryw,
            baseline_latency=eventual,
            projection_lag_p99_events=lag_p99,
            projection_lag_max_events=float(load["lags"][-1]),
            append_rate_with_projection=load["append_rate"],
            target=f"< {TARGET_RYW_P99_MS:g} ms",
            meets_target=ryw.get("p99_ms", 0.0) < TARGET_RYW_P99_MS,
        ),
    ]


def _print(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        print(
            f"{row['name']}\n  {row['value']:>12,.1f} {row['unit']}   beside "
            f"{row['baseline']:>12,.1f} ({row['baseline_name']})   ratio {row['ratio']:.2f}   "
            f"target {row['target']}: {'met' if row['meets_target'] else 'NOT met'}"
        )
        if "paired_quartiles" in row:
            low, high = row["paired_quartiles"]
            print(f"  {row['pairs']} pairs, quartiles of their ratios {low:.2f}-{high:.2f}")
        for key in ("applied_under_load_per_s", "projection_lag_p99_events"):
            if key in row:
                print(f"  {key}: {row[key]:,.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m raygrain.benchmarks.events_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--dir", default=None, help="directory (file system) for the databases")
    parser.add_argument(
        "--load-seconds",
        type=float,
        default=None,
        help="how long the projection and the read-your-writes probes run under load "
        f"(default {LOAD_SECONDS:g} s; longer runs show more of the tail)",
    )
    arguments = parser.parse_args()
    _print(
        asyncio.run(
            run(arguments.quick, directory=arguments.dir, load_seconds=arguments.load_seconds)
        )
    )
