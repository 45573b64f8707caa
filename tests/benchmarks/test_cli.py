"""The suite as a user meets it: every module's ``--help`` prints help and does nothing else,
the results table fits 100 columns, and the plots keep the rules a reader trusts (no bars on a
log axis, legends off the data, colour by better or worse than the baseline)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from raygrain.benchmarks import _plots, _suite
from raygrain.runtime.cli import MAX_WIDTH, table_console

# Each command as a user types it, beside the module it runs as ``__main__`` (None: the
# ``raygrain`` console script) and the ``usage:`` line its help must start with.
COMMANDS = [
    ("raygrain.benchmarks", "python -m raygrain.benchmarks"),
    ("bench", "raygrain bench"),
    *(
        (f"raygrain.benchmarks.{name}_bench", f"python -m raygrain.benchmarks.{name}_bench")
        for name in _suite.available()
    ),
]

# One child process runs every ``--help`` in turn (a process each cost CI a second or more of
# importing per command): each as ``__main__`` with its own argv, its output captured apart.
_DRIVER = """
import contextlib, io, json, runpy, sys
results = {}
for name in sys.argv[1:]:
    out, err, code = io.StringIO(), io.StringIO(), None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            if name == "bench":
                from raygrain.runtime.cli import main
                sys.argv = ["raygrain", "bench", "--help"]
                code = main()
            else:
                sys.argv = [name, "--help"]
                runpy.run_module(name, run_name="__main__", alter_sys=True)
        except SystemExit as exit:
            code = exit.code
    results[name] = {"code": code or 0, "stdout": out.getvalue(), "stderr": err.getvalue()}
print("RESULTS " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def helps(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    where = tmp_path_factory.mktemp("help")
    done = subprocess.run(
        [sys.executable, "-c", _DRIVER, *(name for name, _ in COMMANDS)],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULTS "))
    return json.loads(line[len("RESULTS ") :]), where


@pytest.mark.parametrize(("name", "usage"), COMMANDS, ids=[name for name, _ in COMMANDS])
def test_help_prints_help_and_does_nothing_else(
    helps: tuple[dict[str, Any], Path], name: str, usage: str
) -> None:
    results, where = helps
    done = results[name]
    assert done["code"] == 0, done["stderr"]
    assert done["stdout"].startswith(f"usage: {usage} "), done["stdout"]
    assert done["stderr"] == ""  # no Ray started, no scenario ran
    assert not list(where.iterdir())  # and nothing was written


def _rows() -> list[dict[str, Any]]:
    return [
        {
            "name": "in-process calls/s, 1000 callers over 1000 actors, a long name that wraps",
            "value": 24286.0,
            "baseline": 27240.0,
            "ratio": 24286 / 27240,
            "unit": "calls/s",
            "concurrency": 1000,
            "series": "in-process",
            "target": ">= 60% of the baseline",
            "meets_target": True,
            "latency": {"p50_ms": 0.02, "p90_ms": 9.5, "p99_ms": 25.0, "p99_9_ms": 28.0},
            "baseline_latency": {"p50_ms": 18.0, "p90_ms": 18.5, "p99_ms": 19.0},
        },
        {
            "name": "in-process calls/s, one caller",
            "value": 55127.0,
            "baseline": 106904.0,
            "ratio": 55127 / 106904,
            "unit": "calls/s",
            "concurrency": 1,
            "series": "in-process",
        },
        {
            "name": "memory per idle activation (RSS)",
            "value": 1647.0,
            "baseline": 219.0,
            "ratio": 1647 / 219,
            "unit": "B",
            "lower_is_better": True,
            "target": "< 2048 B",
            "meets_target": True,
        },
        {
            "name": "durable actor writes/s, 200 concurrent writers, fsync",
            "value": 4183.0,
            "baseline": 328.0,
            "ratio": 4183 / 328,
            "unit": "writes/s",
            "target": ">= 10x and >= 20,000/s",
            "meets_target": False,
        },
        {
            "name": "Ray activations/s, first calls to new keys",
            "value": 16466.0,
            "baseline": 2.66,
            "ratio": 6190.0,
            "unit": "activations/s",
            "target": ">= 1000x",
            "meets_target": True,
        },
    ]


def test_the_results_table_fits_100_columns_and_aligns() -> None:
    console = table_console()
    with console.capture() as captured:
        console.print(_suite._table(_rows()))
    lines = captured.get().splitlines()
    assert lines[0].split() == ["figure", "value", "baseline", "ratio", "unit", "target"]
    assert all(len(line) <= MAX_WIDTH for line in lines), max(map(len, lines))
    # Right-aligned numbers end in the same column on every row that has one.
    ends = {line.index("x ") + 1 for line in lines if "x " in line and line[0] != " "}
    assert len(ends) == 1, lines
    assert "0.892x" in captured.get() and "MISSED" in captured.get()
    # Nothing is cut off: every word of every cell is there (a cell may wrap, not lose text).
    words = set(captured.get().split())
    for row in _rows():
        for word in f"{row['name']} {row.get('target', '')} {row['unit']}".split():
            assert word in words, f"{word!r} of {row['name']!r} is missing"


def _figures(draw: Any) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = draw(plt, _rows())
    yield fig
    plt.close(fig)


@pytest.mark.parametrize("draw", [_plots._throughput, _plots._latencies, _plots._ratios])
def test_plots_draw_no_bars_on_a_log_axis_and_keep_legends_off_the_data(draw: Any) -> None:
    from matplotlib.patches import Rectangle

    for fig in _figures(draw):
        fig.canvas.draw()
        for ax in fig.axes:
            if not ax.get_visible():
                continue
            if "log" in (ax.get_xscale(), ax.get_yscale()):
                bars = [p for p in ax.patches if isinstance(p, Rectangle)]
                assert not bars, f"bars on a log axis in {ax.get_title()!r}"
            legend = ax.get_legend()
            if legend is not None:
                # Outside the plotting area: it can cover no point.
                box, area = legend.get_window_extent(), ax.get_window_extent()
                assert box.y1 <= area.y0 or box.x0 >= area.x1, ax.get_title()
            # Every label inside the figure.
            figure_box = fig.bbox
            for text in ax.texts:
                extent = text.get_window_extent()
                assert figure_box.x0 <= extent.x0 and extent.x1 <= figure_box.x1, text.get_text()


def test_latency_panels_are_titled_in_their_axis_unit() -> None:
    for fig in _figures(_plots._latencies):
        (ax,) = [a for a in fig.axes if a.get_visible()]
        assert ax.get_ylabel() == "ms per call"
        assert ax.get_title().startswith("ms per call: in-process, 1000 callers")


def test_ratio_colours_say_better_or_worse_than_the_baseline_not_target_met() -> None:
    for fig in _figures(_plots._ratios):
        (ax,) = fig.axes
        (points,) = ax.collections
        colours = [tuple(round(c, 3) for c in rgba[:3]) for rgba in points.get_facecolors()]
        green, red = (0.173, 0.627, 0.173), (0.839, 0.153, 0.157)
        # slower than the baseline (target met), slower, more memory (target met), faster,
        # faster
        assert colours == [red, red, red, green, green]
