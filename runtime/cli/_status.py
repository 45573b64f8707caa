"""``raygrain status``: what an operator reads about a running deployment.

Per silo: node, status, uptime, activations, calls/s and errors/s over the last interval, p99
turn latency over it, storage health, hosted types and version, from two samples of each
silo's ``stats()`` taken ``interval`` seconds apart; and the controller's health (reachable,
how long it took to answer, the view version). ``--watch`` redraws in place, ``--json``
prints the same figures for scripts (valid JSON: a p99 above the last bucket is ``p99_ms``
null with ``p99_above_ms`` the bucket's bound).
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from raygrain.runtime.cli._table import Column, render_table

__all__ = ["collect", "rates", "render"]


async def _silo_stats(ray: Any, namespace: str, name: str) -> dict[str, Any]:
    try:
        handle = ray.get_actor(name, namespace=namespace)
        stats: dict[str, Any] = await asyncio.wait_for(handle.stats.remote(), 10)
        return stats
    except Exception as exc:  # an unreachable silo is part of the status, not a failure
        return {"error": type(exc).__name__}


async def collect(controller: Any, namespace: str) -> dict[str, Any]:
    """One sample: the view, the controller's health, and every silo's ``stats()``."""
    import ray

    from raygrain.runtime.kernel import view_from_wire

    started = time.monotonic()
    try:
        view = view_from_wire(await asyncio.wait_for(controller.get_view.remote(), 10))
        nodes = await asyncio.wait_for(controller.silo_nodes.remote(), 10)
    except Exception as exc:
        return {"controller": {"ok": False, "error": type(exc).__name__}, "silos": []}
    answered = time.monotonic() - started
    names = sorted(view.silos)
    stats = await asyncio.gather(*(_silo_stats(ray, namespace, n) for n, _ in names))
    silos = [
        {
            "silo": name,
            "status": status.value,
            # The controller's map, else the silo's own word (a controller that Ray restarted
            # knows its silos from the stored view, but not their nodes).
            "node": nodes.get(name) or figures.get("node_id", "?"),
            **figures,
        }
        for (name, status), figures in zip(names, stats, strict=True)
    ]
    return {
        "controller": {"ok": True, "answer_ms": answered * 1000, "view_version": view.version},
        "silos": silos,
    }


def _p99(buckets: list[int], bounds: list[float]) -> float | None:
    total = sum(buckets)
    if not total:
        return None
    rank, seen = 0.99 * total, 0
    for bound, count in zip([*bounds, float("inf")], buckets, strict=True):
        seen += count
        if seen >= rank:
            return bound
    return None


def rates(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """``after`` with each silo's rates over the time since ``before``."""
    earlier = {s["silo"]: s for s in before.get("silos", [])}
    silos = []
    for silo in after.get("silos", []):
        old = earlier.get(silo["silo"], {})
        row = dict(silo)
        # (A count that went down is a silo restarted under its name: no rate over the two.)
        if (
            "turns" in silo
            and "turns" in old
            and silo["time"] > old["time"]
            and silo["turns"] >= old["turns"]
        ):
            seconds = silo["time"] - old["time"]
            row["calls_per_s"] = (silo["turns"] - old["turns"]) / seconds
            row["errors_per_s"] = (silo["turn_errors"] - old["turn_errors"]) / seconds
            recent = [a - b for a, b in zip(silo["turn_buckets"], old["turn_buckets"], strict=True)]
            p99 = _p99(recent, silo["turn_bounds"])
            if p99 is not None and not math.isfinite(p99):
                # Above the last bucket: no upper bound to show, and JSON has no Infinity.
                row["p99_ms"], row["p99_above_ms"] = None, _ms(silo["turn_bounds"][-1])
            else:
                row["p99_ms"] = _ms(p99)
            new_errors = silo["storage_errors"] - old["storage_errors"]
            row["storage_health"] = "ok" if not new_errors else f"{new_errors:g} errors"
        for key in ("turn_buckets", "turn_bounds"):
            row.pop(key, None)
        silos.append(row)
    return {**after, "silos": silos}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _cell(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def _p99_cell(silo: dict[str, Any]) -> str:
    above = silo.get("p99_above_ms")
    return f">{above:g}" if above is not None else _cell(silo.get("p99_ms"), "{:g}")


def _types_cell(silo: dict[str, Any]) -> str:
    # One type a line, so that a name folds only when it is wider than the column (joined
    # with ", " they wrapped mid-name and left lone commas); the runtime's own types
    # (raygrain.*, on every silo) are left to --json.
    types = [t for t in silo.get("types", []) if not t.startswith("raygrain.")]
    return "\n".join([*types, f"raygrain {silo.get('version', '?')}"])


COLUMNS = (
    Column("silo", max_width=24),  # folds: the end of a silo's name tells two apart
    Column("status", overflow="ellipsis", max_width=8),
    Column("node", overflow="ellipsis", max_width=8),
    Column("up", justify="right"),
    Column("act.", justify="right"),
    Column("calls/s", justify="right"),
    Column("err/s", justify="right"),
    Column("p99 ms", justify="right"),
    Column("storage", max_width=10),
    Column("types", max_width=22),  # a type a line, then "raygrain <version>"
)


def render(deployment: str, figures: dict[str, Any]) -> Table:
    """The status table, at most 100 columns wide (see ``cli._table``)."""
    controller = figures["controller"]
    if controller["ok"]:
        title = (
            f"deployment {deployment}: controller ok ({controller['answer_ms']:.0f} ms), "
            f"view version {controller['view_version']}, {len(figures['silos'])} silo(s)"
        )
    else:
        title = f"deployment {deployment}: controller unreachable ({controller['error']})"
    rows = []
    for silo in figures["silos"]:
        if "error" in silo:
            rows.append((silo["silo"], silo["status"], silo["node"], *[None] * 6,
                         f"unreachable: {silo['error']}"))  # fmt: skip
            continue
        rows.append(
            (
                silo["silo"],
                silo["status"],
                silo["node"],
                f"{silo.get('uptime_s', 0) / 60:.0f}m",
                silo.get("activations"),
                _cell(silo.get("calls_per_s"), "{:.1f}"),
                _cell(silo.get("errors_per_s"), "{:.1f}"),
                _p99_cell(silo),
                silo.get("storage_health", silo.get("storage")),
                _types_cell(silo),
            )
        )
    return render_table(COLUMNS, rows, title=title)


async def watch(
    sample: Any, deployment: str, interval: float, forever: bool, console: Console
) -> dict[str, Any]:
    """Sample, wait ``interval``, sample again and show the rates; with ``forever``, keep
    redrawing in place every ``interval`` until interrupted."""
    from rich.live import Live

    before = await sample()
    await asyncio.sleep(interval)
    after = await sample()
    figures = rates(before, after)
    if not forever:
        return figures
    with Live(render(deployment, figures), console=console, auto_refresh=False) as live:
        while True:
            before = after
            await asyncio.sleep(interval)
            after = await sample()
            live.update(render(deployment, rates(before, after)), refresh=True)
