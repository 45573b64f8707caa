"""What the garbage collector costs per call under many writers (a profiling harness).

N writers, each calling its own actor in a closed loop on ``Cluster.local`` (2 silos, SQLite
with fsync, metrics off): ``events`` (an event-sourced actor, one event per call) or ``state``
(per-turn state, one durable write per call), the actors of ``events_bench``. Prints the
rate, the collections per 1,000 calls by generation, the time spent collecting per call
(``gc.callbacks``) and its share of the run::

    python tools/gc_cost.py events --writers 1000 --calls 80
    python tools/gc_cost.py state --writers 1000 --calls 80

Every object a call keeps alive until its batch commits brings the next young collection
closer, and the calls in flight at a collection are promoted and traced again by the older
ones: the figure to compare is collections per 1,000 calls, steadier than the rate.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
import time
from pathlib import Path
from typing import Any

from raygrain.benchmarks._measure import drive
from raygrain.benchmarks.events_bench import EventAccount, StateAccount
from raygrain.runtime import Cluster
from raygrain.storage import SqliteStorage


async def measure(actor: type[Any], writers: int, calls: int) -> None:
    spent = [0.0, 0.0, 0.0]
    collections = [0, 0, 0]
    started = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            spent[info["generation"]] += time.perf_counter() - started[0]
            collections[info["generation"]] += 1

    with tempfile.TemporaryDirectory() as directory:
        storage = SqliteStorage(Path(directory) / "gc.db", durability="fsync")
        async with (
            storage,
            Cluster.local(actors=[actor], silos=2, storage=storage, metrics=False) as cluster,
        ):
            refs = [cluster.get(actor, key) for key in range(writers)]
            await asyncio.gather(*(ref.balance() for ref in refs))
            await drive(lambda target, _: refs[target].deposit(1), writers, writers, 2)
            gc.callbacks.append(timed)
            began = time.perf_counter()
            try:
                rate, _ = await drive(
                    lambda target, _: refs[target].deposit(1), writers, writers, calls
                )
            finally:
                gc.callbacks.remove(timed)
            elapsed = time.perf_counter() - began
    total = writers * calls
    per_thousand = ", ".join(f"{n * 1000 / total:.2f}" for n in collections)
    print(
        f"{actor.__name__}: {rate:,.0f} calls/s; collections per 1,000 calls (gen 0, 1, 2): "
        f"{per_thousand}; collecting {sum(spent) / total * 1e6:.2f} us per call, "
        f"{sum(spent) / elapsed:.1%} of the run"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("side", choices=["events", "state"])
    parser.add_argument("--writers", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=80, help="per writer")
    args = parser.parse_args()
    actor = EventAccount if args.side == "events" else StateAccount
    asyncio.run(measure(actor, args.writers, args.calls))


if __name__ == "__main__":
    main()
