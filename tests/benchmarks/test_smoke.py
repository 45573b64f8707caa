"""The benchmark suite works: every scenario runs in its tiny "smoke" mode and results.json holds
every figure beside a baseline, with a sane ratio. No timing is asserted here, ever.

The suite runs as ``python -m raygrain.benchmarks`` in a subprocess, as a user runs it: Ray,
subprocesses and matplotlib stay out of the test process.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from raygrain.benchmarks import _suite
from raygrain.benchmarks._measure import ScenarioSkipped, paired
from raygrain.benchmarks._postgres_server import find_postgres_bin

ROOT = Path(__file__).resolve().parent.parent.parent

# The figures each scenario owned by this suite must produce in smoke mode; a scenario not
# listed here must produce at least one.
EXPECTED = {
    "calls": {
        "in-process calls/s, one caller",
        "in-process calls/s, 10 callers over 10 actors",
        "in-process calls/s, 100 callers over 100 actors",
        "in-process calls/s, 1000 callers over 1000 actors",
    },
    "postgres": {
        "durable actor writes/s on PostgreSQL, 100 writers",
        "durable actor writes/s on PostgreSQL vs raw asyncpg upserts, 100 writers",
        "durable actor writes/s on PostgreSQL vs SQLite, 100 writers",
        "transactional transfers/s on PostgreSQL, low contention (100,000 accounts, 100 in flight)",
        "transactional transfers/s on PostgreSQL vs SQLite, low contention (100,000 accounts, "
        "100 in flight)",
    },
    "sagas": {
        "sagas completed/s, 3 steps, 100 in flight, 2 silos, SQLite",
        "CPU per saga, 3 steps (this process, all threads)",
    },
    "memory": {
        "memory per idle activation (RSS)",
        "memory per idle activation beyond the state",
    },
    "reminders": {
        "reminder ticks/s, 200 reminders at 1 s, 2 silos",
        "reminder tick lateness p99, 200 reminders",
        "CPU per reminder tick, 200 reminders (all threads)",
        "load 1000 reminders by ring range, 2 silos starting",
        "memory per owned reminder, 1000 reminders (RSS)",
    },
    "streams": {
        "fast stream deliveries/s, 10 streams x 3 consumers",
        "durable stream deliveries/s, 10 streams x 3 consumers",
        "durable stream events published/s, 10 publishers",
        "CPU per durable stream delivery, 30 consumers (all threads)",
        "CPU per fast stream delivery, 30 consumers (all threads)",
        "durable stream delivery latency p50, 30 consumers",
        "durable stream delivery latency p99, 30 consumers",
        "durable stream delivery latency p50 at saturation, 30 consumers",
    },
    "ray": {
        "Ray activations/s, first calls to new keys",
        "Ray calls/s, one caller",
        "Ray single-call latency p50",
        "Ray calls/s, 1000 callers over 1000 actors",
    },
}


def _run_suite(out: Path, *options: str) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "raygrain.benchmarks", "--smoke", "--out", str(out), *options],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, f"suite failed:\n{done.stdout}\n{done.stderr}"
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    return results


def _check_figures(results: dict[str, Any], scenarios: list[str]) -> None:
    by_scenario: dict[str, set[str]] = {name: set() for name in scenarios}
    for row in results["figures"]:
        by_scenario[row["scenario"]].add(row["name"])
        for key in ("value", "baseline", "ratio"):
            value = row[key]
            assert isinstance(value, (int, float)), f"{row['name']}: {key} is {value!r}"
            assert math.isfinite(value) and value > 0, f"{row['name']}: {key} is {value!r}"
        assert row["ratio"] == pytest.approx(row["value"] / row["baseline"])
        assert row["unit"], row["name"]
    for name in scenarios:
        expected = EXPECTED.get(name)
        if expected is None:
            assert by_scenario[name], f"scenario {name} produced no figure"
        else:
            assert by_scenario[name] >= expected, f"{name}: missing {expected - by_scenario[name]}"
    status = {s["name"]: s["status"] for s in results["scenarios"]}
    assert all(status[name] == "ok" for name in scenarios), status


def test_every_local_scenario_runs_and_reports_beside_its_baseline(tmp_path: Path) -> None:
    results = _run_suite(tmp_path, "--local")
    needs = {name: _suite.ray_need(name) for name in _suite.available()}
    status = {s["name"]: s["status"] for s in results["scenarios"]}
    local = [name for name, need in needs.items() if not need]
    if find_postgres_bin() is None and not os.environ.get("RAYGRAIN_BENCH_POSTGRES_DSN"):
        # No PostgreSQL server to run against: the scenario says so instead of failing.
        assert status["postgres"] == "skipped"
        local.remove("postgres")
    _check_figures(results, local)
    assert all(status[name] == "skipped" for name, need in needs.items() if need)
    assert results["mode"]["size"] == "smoke"
    machine, versions = results["machine"], results["versions"]
    assert machine["cpu_count"] >= 1 and machine["ram_bytes"] > 0 and machine["python"]
    assert versions["raygrain"] and versions["msgpack"] and versions["aiosqlite"]
    assert "timestamp" in results
    latencies = [row for row in results["figures"] if row["scenario"] == "calls"]
    assert all(row["latency"]["p50_ms"] > 0 for row in latencies)
    if _has_matplotlib():
        assert (tmp_path / "throughput_vs_concurrency.png").stat().st_size > 0
        assert (tmp_path / "latency_percentiles.png").stat().st_size > 0


# About 20 s, most of it starting and stopping a local Ray; the figures take a few seconds.
@pytest.mark.ray
@pytest.mark.fresh_ray
def test_ray_scenario_runs_and_reports_beside_its_baseline(tmp_path: Path) -> None:
    results = _run_suite(tmp_path, "--only", "ray")
    _check_figures(results, ["ray"])
    assert results["mode"]["ray"].startswith("local")


# Its own 3-node Ray cluster, a workload, a node and the controller process killed: about half
# a minute on a quiet machine.
@pytest.mark.ray
@pytest.mark.fresh_ray
@pytest.mark.slow
def test_failover_scenario_runs_and_reports_beside_its_baseline(tmp_path: Path) -> None:
    results = _run_suite(tmp_path, "--only", "failover")
    _check_figures(results, ["failover"])
    rows = {row["name"]: row for row in results["figures"]}
    detection = rows["failover: seconds from node kill to detection (worst over victims)"]
    assert detection["lost_acknowledged_writes"] == 0
    worst = [name for name in rows if name.startswith("failover: seconds from node kill to full")]
    assert any("timeline" in rows[name] for name in worst), worst
    double = rows["failover: seconds to full service, node and controller process killed at once"]
    assert double["lost_acknowledged_writes"] == 0


def test_both_result_shapes_become_rows() -> None:
    rows, details = _suite._rows_of("listed", [{"name": "a", "value": 2.0, "baseline": 1.0}])
    assert rows == [{"scenario": "listed", "name": "a", "value": 2.0, "baseline": 1.0}]
    assert details == {}
    shaped = {
        "writers": 3,
        "group_commit": {"p50_ms": 1.0, "p99_ms": 2.0},
        "baseline_commit_per_write": {"p50_ms": 5.0, "p99_ms": 9.0},
        "figures": [{"name": "b", "value": 4.0, "baseline": 2.0}],
    }
    rows, details = _suite._rows_of("shaped", shaped)
    assert rows[0]["latency"] == {"p50_ms": 1.0, "p99_ms": 2.0}
    assert rows[0]["baseline_latency"] == {"p50_ms": 5.0, "p99_ms": 9.0}
    assert "figures" not in details and details["writers"] == 3


async def test_a_scenario_that_cannot_run_here_is_skipped_with_its_reason() -> None:
    class Module:
        @staticmethod
        async def run(quick: bool = False) -> list[Any]:
            raise ScenarioSkipped("no server here")

    outcome = await _suite._scenario("missing", Module, "smoke", None, "[1/1]")  # type: ignore[arg-type]
    assert (outcome.status, outcome.error, outcome.rows) == ("skipped", "no server here", [])


def test_unknown_scenario_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert _suite.main(["--only", "nosuch", "--out", "unused"]) == 2
    assert "unknown scenario(s) nosuch" in capsys.readouterr().err
    # An empty --only ran the whole suite (12 minutes); an --out that cannot be made raised.
    assert _suite.main(["--only", "", "--out", "unused"]) == 2
    assert "--only names none" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("")
    out = str(tmp_path / "a-file" / "results")
    assert _suite.main(["--only", "storage", "--smoke", "--out", out]) == 2
    assert f"--out {out}:" in capsys.readouterr().err


def test_failover_timeline_is_plotted_when_a_row_carries_one(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from raygrain.benchmarks._plots import write_plots

    row = {
        "name": "calls/s during a silo crash",
        "value": 900.0,
        "baseline": 1000.0,
        "ratio": 0.9,
        "unit": "calls/s",
        "timeline": [[0.0, 1000], [1.0, 980], [1.5, "silo killed"], [2.0, 0], [3.0, 990]],
    }
    written = {path.name for path in write_plots([row], tmp_path)}
    assert written == {"ratios.png", "failover_timeline.png"}


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


async def test_paired_rounds_alternate_their_order_and_take_the_median_pair() -> None:
    order: list[str] = []
    rates = {"a": iter([3.0, 2.0, 2.0, 9.0, 2.0]), "b": iter([1.0, 1.0, 1.0, 1.0, 1.0])}

    def side(name: str) -> Callable[[], Awaitable[float]]:
        async def measure() -> float:
            order.append(name)
            return next(rates[name])

        return measure

    measured = await paired(side("a"), side("b"), 5)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b"]
    assert measured.ratios == [3.0, 2.0, 2.0, 9.0, 2.0]
    assert measured.ratio == 2.0  # the burst (9.0) and the slow start (3.0) do not count
    assert measured.quartiles == (2.0, 6.0)
