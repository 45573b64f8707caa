"""The benchmark suite: every scenario in one run, each figure beside its baseline, with plots.

    python -m raygrain.benchmarks [--quick] [--only NAME[,NAME]] [--local] [--ray ADDRESS]
                                  [--out DIR]

A scenario is a module ``benchmarks/NAME_bench.py`` with ``async def run(quick=False) -> rows``,
rows built with ``benchmarks._measure.figure`` (a result dict with a ``"figures"`` list is taken
too; its other keys are kept as the scenario's details). ``run`` may also accept ``smoke=`` (a
tiny run for the test suite) and ``address=`` (the Ray cluster to use). A module that sets
``NEEDS_RAY = True`` runs inside the suite's one Ray session, after every other scenario; one
that sets ``NEEDS_RAY = "own"`` starts its own Ray cluster and runs before that session. Both
are skipped with ``--local``.

The run prints a line as each scenario ends (in a terminal, a spinner with the time so far
while it runs; elsewhere a line as it starts), a table at the end (rich, within 100 columns), and
writes
``results.json`` (machine, versions, mode, every figure) and PNG plots into ``--out``.
``raygrain bench`` calls ``main(argv)``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib
import inspect
import json
import math
import os
import pkgutil
import platform
import sys
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from raygrain.benchmarks._measure import ScenarioSkipped, now
from raygrain.benchmarks._plots import write_plots
from raygrain.runtime.cli import Column, render_table, table_console

__all__ = ["available", "main", "ray_need"]

Row = dict[str, Any]

# Cheap and quiet scenarios first; those that start processes or a Ray session last.
_ORDER = (
    "calls",
    "storage",
    "durable_writes",
    "events",
    "transactions",
    "sagas",
    "postgres",
    "reminders",
    "streams",
    "memory",
    "failover",
    "ray",
)
# Ray needs: "own" for a scenario that starts its own Ray cluster (in a child process), which
# may also say so itself with ``NEEDS_RAY = "own"``; this set covers one that does not yet.
_OWN_RAY = frozenset({"failover"})
_RAY_ORDER = {"": 0, "own": 1, "session": 2}
_VERSIONS = (
    "raygrain",
    "ray",
    "msgpack",
    "aiosqlite",
    "asyncpg",
    "structlog",
    "xxhash",
    "matplotlib",
)


def available() -> list[str]:
    """Names of every scenario module in ``benchmarks/`` (``NAME_bench.py``), in run order."""
    package = Path(__file__).resolve().parent
    names = [
        info.name.removesuffix("_bench")
        for info in pkgutil.iter_modules([str(package)])
        if info.name.endswith("_bench")
    ]
    rank = {name: index for index, name in enumerate(_ORDER)}
    return sorted(names, key=lambda n: (rank.get(n, len(_ORDER)), n))


@dataclass
class _Outcome:
    """What one scenario produced (or why it did not)."""

    name: str
    status: str = "ok"  # ok | error | skipped
    seconds: float = 0.0
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    def summary(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "name": self.name,
            "status": self.status,
            "seconds": round(self.seconds, 2),
            "figures": len(self.rows),
        }
        if self.error:
            found["error"] = self.error
        if self.details:
            found["details"] = self.details
        return found


def main(argv: list[str] | None = None, prog: str = "python -m raygrain.benchmarks") -> int:
    """Run the suite; 0 when every selected scenario ran, 1 when one failed, 2 on bad usage.
    ``prog`` is the command as the user typed it, for ``--help`` (``raygrain bench``)."""
    arguments = _parser(prog).parse_args(argv)
    names = available()
    selected = names
    if arguments.only is not None:
        selected = [n.strip() for n in arguments.only.split(",") if n.strip()]
        unknown = sorted(set(selected) - set(names))
        if unknown or not selected:
            what = f"unknown scenario(s) {', '.join(unknown)}" if unknown else "--only names none"
            print(f"{prog}: {what}; available: {', '.join(names)}", file=sys.stderr)
            return 2
        selected = [n for n in names if n in selected]
    try:
        Path(arguments.out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"{prog}: --out {arguments.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return asyncio.run(_run(arguments, selected, sys.argv[1:] if argv is None else list(argv)))


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="raygrain's benchmark suite: every figure beside its baseline, with plots.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="short runs (about 4 min on 2 cores)")
    size.add_argument(
        "--smoke", action="store_true", help="tiny runs that only check the scenarios work"
    )
    parser.add_argument("--only", metavar="NAME[,NAME]", help=f"run only these: {available()}")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="skip the scenarios that need Ray")
    where.add_argument(
        "--ray", metavar="ADDRESS", help="run the Ray scenarios on this cluster (default: local)"
    )
    parser.add_argument("--out", default="bench-results", help="output folder for JSON and plots")
    return parser


async def _run(arguments: argparse.Namespace, selected: list[str], argv: list[str]) -> int:
    size = "smoke" if arguments.smoke else "quick" if arguments.quick else "full"
    out_dir = Path(arguments.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    started_at = dt.datetime.now(dt.timezone.utc)
    load_before = _load()
    modules, outcomes = _import(selected)
    ray_mode = _ray_mode(arguments, selected, modules)
    print(f"raygrain benchmarks: {size} run of {', '.join(selected)}; Ray: {ray_mode}", flush=True)
    # Scenarios without Ray first, then those that bring their own Ray cluster, then those
    # that share the suite's one Ray session: never two Ray clusters on the machine at once.
    plan = sorted(
        (n for n in selected if n in modules), key=lambda n: _RAY_ORDER[_ray_need(n, modules[n])]
    )
    progress = {name: f"[{i}/{len(plan)}]" for i, name in enumerate(plan, 1)}
    for name in plan:
        need = _ray_need(name, modules[name])
        if need and arguments.local:
            print(f"{progress[name]} {name}: skipped (--local: needs Ray)", flush=True)
            outcomes[name] = _Outcome(name, "skipped", error="--local: needs Ray")
        elif need != "session":
            outcomes[name] = await _scenario(name, modules[name], size, None, progress[name])
    in_session = [n for n in plan if _ray_need(n, modules[n]) == "session"]
    if in_session and not arguments.local:
        outcomes.update(await _ray_session(arguments.ray, in_session, modules, size, progress))
    ordered = [outcomes[n] for n in selected]
    rows = [row for outcome in ordered for row in outcome.rows]
    print(flush=True)
    table_console().print(_table(rows))
    plots = write_plots(rows, out_dir)
    results = {
        "suite": "raygrain benchmarks",
        "timestamp": started_at.isoformat(timespec="seconds"),
        "seconds": round((dt.datetime.now(dt.timezone.utc) - started_at).total_seconds(), 1),
        "mode": {"size": size, "ray": ray_mode, "argv": argv},
        "machine": _machine(load_before),
        "versions": _versions(),
        "scenarios": [outcome.summary() for outcome in ordered],
        "figures": rows,
        "plots": [path.name for path in plots],
    }
    path = out_dir / "results.json"
    path.write_text(json.dumps(_clean(results), indent=2) + "\n")
    print(f"\nwrote {path}" + "".join(f"\nwrote {p}" for p in plots))
    failed = [o.name for o in ordered if o.status == "error"]
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


def _import(selected: list[str]) -> tuple[dict[str, ModuleType], dict[str, _Outcome]]:
    modules, outcomes = {}, {}
    for name in selected:
        try:
            modules[name] = importlib.import_module(f"raygrain.benchmarks.{name}_bench")
        except Exception:
            outcomes[name] = _Outcome(name, "error", error=traceback.format_exc())
            print(f"{name}: cannot be imported\n{outcomes[name].error}", flush=True)
    return modules, outcomes


def ray_need(name: str) -> str:
    """What the scenario ``name`` needs of Ray: "", "own" or "session" (see the module doc)."""
    return _ray_need(name, importlib.import_module(f"raygrain.benchmarks.{name}_bench"))


def _ray_need(name: str, module: ModuleType) -> str:
    """ "" (no Ray), "own" (starts its own Ray cluster) or "session" (the suite's session)."""
    need = getattr(module, "NEEDS_RAY", "own" if name in _OWN_RAY else False)
    if need == "own":
        return "own"
    return "session" if need else ""


def _ray_mode(
    arguments: argparse.Namespace, selected: list[str], modules: dict[str, ModuleType]
) -> str:
    needs = {_ray_need(n, m) for n, m in modules.items() if n in selected} - {""}
    if not needs:
        return "not needed"
    if arguments.local:
        return "skipped (--local)"
    if "session" not in needs:
        return "each scenario starts its own"
    return arguments.ray or "local (started by the suite)"


async def _ray_session(
    address: str | None,
    names: list[str],
    modules: dict[str, ModuleType],
    size: str,
    progress: dict[str, str],
) -> dict[str, _Outcome]:
    from raygrain.benchmarks._ray import ensure_ray, shutdown_ray

    started = now()
    print(f"starting Ray ({address or 'local'}) for {', '.join(names)}...", flush=True)
    try:
        started_ray = ensure_ray(address)
    except Exception:
        error = f"Ray did not start:\n{traceback.format_exc()}"
        print(error, flush=True)
        return {name: _Outcome(name, "error", error=error) for name in names}
    print(f"Ray up in {now() - started:.1f} s", flush=True)
    outcomes = {}
    try:
        for name in names:
            outcomes[name] = await _scenario(name, modules[name], size, address, progress[name])
    finally:
        if started_ray:
            shutdown_ray()
    return outcomes


async def _scenario(
    name: str, module: ModuleType, size: str, address: str | None, progress: str
) -> _Outcome:
    outcome = _Outcome(name)
    started = now()
    console = table_console()
    # In a terminal a spinner with the time so far shows while the scenario runs; elsewhere
    # (CI, a pipe) one line says it started.
    if not console.is_terminal:
        print(f"{progress} {name}: running...", flush=True)
    with Progress(
        SpinnerColumn(),
        TextColumn(f"{progress} {name}: running", markup=False),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as spinner:
        spinner.add_task(name, total=None)
        try:
            result = await _call(module.run, size, address)
            outcome.rows, outcome.details = _rows_of(name, result)
        except ScenarioSkipped as skipped:
            outcome.status, outcome.error = "skipped", str(skipped)
        except Exception:
            outcome.status, outcome.error = "error", traceback.format_exc()
    outcome.seconds = now() - started
    if outcome.status == "ok":
        print(
            f"{progress} {name}: {len(outcome.rows)} figures in {outcome.seconds:.1f} s", flush=True
        )
    elif outcome.status == "skipped":
        print(f"{progress} {name}: skipped ({outcome.error})", flush=True)
    else:
        print(
            f"{progress} {name}: FAILED after {outcome.seconds:.1f} s\n{outcome.error}", flush=True
        )
    return outcome


async def _call(run: Any, size: str, address: str | None) -> Any:
    accepts = inspect.signature(run).parameters
    options: dict[str, Any] = {}
    if "smoke" in accepts:
        options["smoke"] = size == "smoke"
    if "address" in accepts:
        options["address"] = address
    return await run(size != "full", **options)


def _rows_of(name: str, result: Any) -> tuple[list[Row], dict[str, Any]]:
    """Rows from either scenario shape: a list of rows, or a dict with a ``figures`` list."""
    details: dict[str, Any] = {}
    if isinstance(result, dict):
        details = {k: v for k, v in result.items() if k != "figures"}
        result = result.get("figures", [])
    rows = [{"scenario": name, **row} for row in result]
    for row in rows:
        _lift_latencies(row, details)
    return rows, details


def _lift_latencies(row: Row, details: dict[str, Any]) -> None:
    """Give a row its latency percentiles when its scenario reported them only in its details:
    a sub-dict with ``p50_ms`` whose key names the baseline, and exactly one other."""
    if "latency" in row or not details:
        return
    sides = {k: v for k, v in details.items() if isinstance(v, dict) and "p50_ms" in v}
    base = [k for k in sides if "baseline" in k]
    ours = [k for k in sides if "baseline" not in k]
    if len(base) == 1 and len(ours) == 1:
        pick = ("p50_ms", "p90_ms", "p99_ms", "p99_9_ms", "max_ms")
        row["latency"] = {k: sides[ours[0]][k] for k in pick if k in sides[ours[0]]}
        row["baseline_latency"] = {k: sides[base[0]][k] for k in pick if k in sides[base[0]]}


def _table(rows: list[Row]) -> Table:
    columns = [
        Column("figure"),  # long names wrap inside their column
        Column("value", justify="right"),
        Column("baseline", justify="right"),
        Column("ratio", justify="right"),
        Column("unit", max_width=14),
        Column("target", max_width=22),
    ]
    cells = []
    for row in rows:
        target = ""
        if "target" in row:
            met = row.get("meets_target")
            target = f"{row['target']} {'ok' if met else 'MISSED' if met is not None else ''}"
        cells.append(
            (
                row["name"],
                _number(row["value"]),
                _number(row["baseline"]),
                f"{row['ratio']:.3g}x" if _finite(row["ratio"]) else "-",
                row["unit"],
                target.strip(),
            )
        )
    return render_table(columns, cells)


def _number(value: Any) -> str:
    if not _finite(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _machine(load_before: list[float] | None) -> dict[str, Any]:
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        ram = None
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "ram_bytes": ram,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        # The machine may be shared: the load around the run says how far to trust it.
        "load_average_before": load_before,
        "load_average_after": _load(),
    }


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for package in _VERSIONS:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def _clean(value: Any) -> Any:
    """JSON without NaN or infinities (strict parsers reject them): they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value
