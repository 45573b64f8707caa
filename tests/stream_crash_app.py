"""The child process of tests/runtime/test_stream_crash.py: durable publishing until killed.

    python -m tests.stream_crash_app DB_PATH STREAMS START[,START...] TOTAL [finish]

Runs a two-silo local cluster on a SQLite file, with the implicit consumers of the "orders"
namespace (tests/stream_app.py), and one publisher per stream ``k0``, ``k1``, ... publishing
the numbers from its START to TOTAL with the event ids ``k<i>:<n>`` (so republishing one whose
fate the last run never learnt appends it at most once). After each acknowledged publish, and
before anything else, it prints ``ack KEY N`` and flushes. With ``finish`` it then waits until
every consumer has consumed its stream to the end and prints ``done``.
"""

from __future__ import annotations

import asyncio
import sys

from raygrain.runtime import Cluster
from raygrain.runtime.streams import StreamSettings
from raygrain.storage import SqliteStorage
from tests.stream_app import OrderAuditor, OrderConsumer

SETTINGS = StreamSettings(sweep_period=0.1, retry_delay=0.05)


async def publish(cluster: Cluster, key: str, start: int, total: int) -> None:
    stream = cluster.streams.get("orders", key)
    for n in range(start, total + 1):
        await stream.publish(n, event_id=f"{key}:{n}")
        sys.stdout.write(f"ack {key} {n}\n")
        sys.stdout.flush()


async def consumed(cluster: Cluster, key: str, total: int) -> None:
    for cls in (OrderConsumer, OrderAuditor):
        ref = cluster.get(cls, key)
        while len(await ref.seen()) < total:
            await asyncio.sleep(0.02)


async def main(db: str, streams: int, starts: list[int], total: int, finish: bool) -> None:
    storage = SqliteStorage(db, durability="fsync")
    async with Cluster.local(
        actors=[OrderConsumer, OrderAuditor], silos=2, storage=storage, streams=SETTINGS
    ) as cluster:
        keys = [f"k{i}" for i in range(streams)]
        await asyncio.gather(
            *(publish(cluster, k, s, total) for k, s in zip(keys, starts, strict=True))
        )
        if finish:  # (bounded: a consumer that never catches up fails the run)
            await asyncio.wait_for(asyncio.gather(*(consumed(cluster, k, total) for k in keys)), 30)
            sys.stdout.write("done\n")
            sys.stdout.flush()
    await storage.aclose()


if __name__ == "__main__":
    db, streams, starts, total = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    finish = len(sys.argv) > 5 and sys.argv[5] == "finish"
    asyncio.run(main(db, streams, [int(s) for s in starts.split(",")], total, finish))
