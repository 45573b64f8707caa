"""Memory per idle activation: RSS growth of one silo process per activation, beside plain objects.

Each side runs in a fresh subprocess, so that neither inherits the other's freed memory: the
raygrain side activates N actors with a small state in one in-process silo (``memory://``
storage, filled before the first RSS reading so that the stored records do not count) and lets
them go idle; the baseline builds a dict of N keys to the same state, the least any program
holding those states needs. A third subprocess traces a small sample (tracemalloc, and a census
of the new objects by type) to show which objects make up an activation.

The state's own size is measured (tracemalloc, per state object and its field values) and
reported apart, so "beyond the state" is what the runtime adds per activation.

    python -m raygrain.benchmarks.memory_bench [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import sys
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raygrain.actors import Actor, ActorId, encode_state, read_only
from raygrain.benchmarks._measure import figure
from raygrain.runtime import Cluster

__all__ = ["run"]

_REPO = Path(__file__).resolve().parent.parent
_BATCH = 256  # concurrent first calls while activating: few enough to leave few idle runners
_TARGET_BYTES = 2048


@dataclass
class Profile:
    """The small state every activation (and every baseline object) holds."""

    visits: int = 0
    label: str = ""


def _state(key: int) -> Profile:
    return Profile(visits=100_000 + key, label=f"user-{key:08d}")


class Holder(Actor[Profile], name="bench.Holder"):
    @read_only
    async def peek(self) -> int:
        return self.state.visits


@dataclass(frozen=True)
class _Sizes:
    activations: int
    sample: int  # traced in detail


def _sizes(quick: bool, smoke: bool) -> _Sizes:
    if smoke:
        return _Sizes(activations=2_000, sample=1_000)
    if quick:
        return _Sizes(activations=20_000, sample=5_000)
    return _Sizes(activations=1_000_000, sample=10_000)


# -- the subprocesses ----------------------------------------------------------------------------


def _rss() -> int:
    try:
        import psutil
    except ImportError:  # psutil is a test extra; Linux has the figure in /proc too
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return int(psutil.Process().memory_info().rss)


def _settled_rss() -> int:
    gc.collect()
    return _rss()


async def _activate_all(cluster: Cluster, keys: range) -> None:
    for start in range(keys.start, keys.stop, _BATCH):
        batch = range(start, min(keys.stop, start + _BATCH))
        await asyncio.gather(*(cluster.get(Holder, k).peek() for k in batch))


async def _with_silo(count: int, measure: Any, stored: int | None = None) -> dict[str, Any]:
    async with Cluster.local(actors=[Holder], silos=1, storage="memory://") as cluster:
        storage = cluster.storage
        assert storage is not None
        type_name = Holder.__actor_options__.name
        for key in range(stored or count):
            await storage.write(ActorId(type_name, key), encode_state(_state(key)), None)
        await _activate_all(cluster, range(-1, 0))  # warm every code path before measuring
        result: dict[str, Any] = await measure(cluster)
        result["activations"] = sum(s["activations"] for s in await cluster.stats())
        return result


async def _child_raygrain(count: int) -> dict[str, Any]:
    async def measure(cluster: Cluster) -> dict[str, Any]:
        before = _settled_rss()
        await _activate_all(cluster, range(count))
        return {"rss_bytes": _settled_rss() - before}

    return await _with_silo(count, measure)


def _child_plain(count: int) -> dict[str, Any]:
    before = _settled_rss()
    objects = {key: _state(key) for key in range(count)}
    grown = _settled_rss() - before
    return {"rss_bytes": grown, "activations": len(objects)}


def _state_bytes(count: int) -> float:
    """Bytes allocated per state object with its field values (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    states = [_state(k) for k in range(count)]
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return (grown - sys.getsizeof(states)) / len(states)


async def _child_census(count: int) -> dict[str, Any]:
    state_bytes = _state_bytes(count)

    async def measure(cluster: Cluster) -> dict[str, Any]:
        # Two passes over separate keys, so that neither tool's own objects are counted by
        # the other: first a census of the new objects by type, then tracemalloc by line.
        gc.collect()
        known = {id(o) for o in gc.get_objects()}
        await _activate_all(cluster, range(count))
        gc.collect()
        after = gc.get_objects()
        known.update((id(known), id(after)))
        types: collections.Counter[str] = collections.Counter()
        sizes: collections.Counter[str] = collections.Counter()
        for obj in after:
            if id(obj) not in known:
                name = type(obj).__qualname__
                types[name] += 1
                sizes[name] += sys.getsizeof(obj)
        del after, known
        gc.collect()
        tracemalloc.start()
        first = tracemalloc.take_snapshot()
        await _activate_all(cluster, range(count, 2 * count))
        gc.collect()
        second = tracemalloc.take_snapshot()
        tracemalloc.stop()
        by_line = second.compare_to(first, "lineno")
        traced = sum(stat.size_diff for stat in by_line)
        return {
            "state_bytes": state_bytes,
            "traced_bytes": traced,
            "top_lines": [
                {
                    "where": _short(str(stat.traceback[0])),
                    "bytes_per_activation": round(stat.size_diff / count, 1),
                    "blocks_per_activation": round(stat.count_diff / count, 2),
                }
                for stat in by_line[:12]
            ],
            "top_types": [
                {
                    "type": name,
                    "per_activation": round(types[name] / count, 2),
                    "bytes_per_activation": round(sizes[name] / count, 1),
                }
                for name, _ in sizes.most_common(12)
            ],
        }

    return await _with_silo(count, measure, stored=2 * count)


def _short(where: str) -> str:
    for prefix in (str(_REPO) + os.sep, sys.prefix + os.sep, sys.base_prefix + os.sep):
        where = where.replace(prefix, "")
    return where


def _child(kind: str, count: int) -> dict[str, Any]:
    if kind == "plain":
        return _child_plain(count)
    if kind == "raygrain":
        return asyncio.run(_child_raygrain(count))
    return asyncio.run(_child_census(count))


# -- the scenario --------------------------------------------------------------------------------


async def _spawn(kind: str, count: int) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO), env.get("PYTHONPATH")]))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "raygrain.benchmarks.memory_bench",
        "--child",
        kind,
        str(count),
        env=env,
        cwd=_REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"memory_bench child {kind} failed:\n{err.decode(errors='replace')}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    if result["activations"] < count:
        raise RuntimeError(f"child {kind}: {result['activations']} activations, wanted {count}")
    return result


async def run(quick: bool = False, *, smoke: bool = False) -> list[dict[str, Any]]:
    sizes = _sizes(quick, smoke)
    n = sizes.activations
    # Separate processes measure their own RSS only, so they may as well run side by side.
    plain, ours, census = await asyncio.gather(
        _spawn("plain", n), _spawn("raygrain", n), _spawn("census", sizes.sample)
    )
    state = census["state_bytes"]
    per_activation = ours["rss_bytes"] / n
    per_object = plain["rss_bytes"] / n
    common = {
        "baseline_name": "dict of key -> dataclass state",
        "activations": n,
        "state_bytes": round(state, 1),
    }
    beyond = figure(
        "memory per idle activation beyond the state",
        per_activation - state,
        per_object - state,
        "B",
        lower_is_better=True,
        target=f"< {_TARGET_BYTES} B",
        meets_target=per_activation - state < _TARGET_BYTES,
        traced_bytes_per_activation=round(census["traced_bytes"] / sizes.sample, 1),
        sample=sizes.sample,
        top_types=census["top_types"],
        top_lines=census["top_lines"],
        **common,
    )
    total = figure(
        "memory per idle activation (RSS)",
        per_activation,
        per_object,
        "B",
        lower_is_better=True,
        **common,
    )
    return [total, beyond]


def _print(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        value, baseline = row["value"], row["baseline"]
        print(f"{row['name']}: {value:,.0f} B vs {baseline:,.0f} B ({row['ratio']:.1f}x)")
    detail = rows[-1]
    traced = detail["traced_bytes_per_activation"]
    print(f"state: {detail['state_bytes']} B; traced per activation: {traced} B")
    print("new objects per activation, by type:")
    for entry in detail["top_types"]:
        count, size = entry["per_activation"], entry["bytes_per_activation"]
        print(f"  {entry['type']:<28} {count:>6} x  {size:>8} B")
    print("allocations per activation, by line:")
    for entry in detail["top_lines"]:
        print(f"  {entry['bytes_per_activation']:>8} B  {entry['where']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m raygrain.benchmarks.memory_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="20,000 activations, not 1,000,000")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        print(json.dumps(_child(arguments.child[0], int(arguments.child[1]))))
    else:
        _print(asyncio.run(run(arguments.quick)))
