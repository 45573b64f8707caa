"""The suite's plots: PNG files drawn from the figure rows with matplotlib's Agg backend.

Each plot is drawn only when some row carries what it needs: ``concurrency`` and ``series`` for
throughput against concurrency, ``latency`` and ``baseline_latency`` for the percentile bars,
``timeline`` for a failover timeline. The ratio overview is drawn from every row.
"""

from __future__ import annotations

import math
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

__all__ = ["write_plots"]

Row = dict[str, Any]
_PERCENTILES = (("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99"), ("p99_9_ms", "p99.9"))
_OURS, _BASE = "#1f77b4", "#ff7f0e"


def write_plots(rows: list[Row], out_dir: Path) -> list[Path]:
    """Draw every plot the rows allow into ``out_dir``; returns the files written."""
    try:
        import matplotlib
    except ImportError:
        print("note: matplotlib is not installed; no plots (pip install matplotlib)")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, draw in (
        ("throughput_vs_concurrency.png", _throughput),
        ("latency_percentiles.png", _latencies),
        ("ratios.png", _ratios),
        ("failover_timeline.png", _timelines),
    ):
        fig = draw(plt, rows)
        if fig is None:
            continue
        path = out_dir / name
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def _throughput(plt: Any, rows: list[Row]) -> Any:
    series: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        if "concurrency" in row and "series" in row and _finite(row["value"], row["baseline"]):
            series[row["series"]].append(row)
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(8, 5.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (name, points) in enumerate(sorted(series.items())):
        # Ratio labels above-left for one series, below-right for the next: never on each other.
        above = index % 2 == 0
        points.sort(key=lambda r: r["concurrency"])
        x = [r["concurrency"] for r in points]
        color = colors[index % len(colors)]
        ax.plot(x, [r["value"] for r in points], "o-", color=color, label=f"raygrain, {name}")
        baseline = points[0].get("baseline_name", "baseline")
        label = f"{baseline} ({name})"
        ax.plot(x, [r["baseline"] for r in points], "s--", color=color, alpha=0.6, label=label)
        for row in points:
            where = (row["concurrency"], row["value"])
            ax.annotate(
                f"{row['ratio']:.2g}x",
                where,
                textcoords="offset points",
                xytext=(-4, 7) if above else (4, -12),
                ha="right" if above else "left",
                fontsize=8,
                color=color,
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.margins(x=0.12)
    ax.set_xlabel("concurrent callers (N callers over N actors)")
    ax.set_ylabel(f"{points[0]['unit']} (median round)")
    ax.set_title("Throughput against concurrency (solid: raygrain, dashed: baseline)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _latencies(plt: Any, rows: list[Row]) -> Any:
    chosen, seen = [], []
    for row in rows:
        latency, base = row.get("latency"), row.get("baseline_latency")
        if not latency or not base or (latency, base) in seen:
            continue  # a row that repeats another's latencies (a p50 figure) adds nothing
        seen.append((latency, base))
        chosen.append(row)
    if not chosen:
        return None
    columns = min(3, len(chosen))
    lines = math.ceil(len(chosen) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4.6 * columns, 3.4 * lines), squeeze=False)
    for ax, row in zip(axes.flat, chosen, strict=False):
        keys = [(k, label) for k, label in _PERCENTILES if k in row["latency"]]
        x = range(len(keys))
        ours = [row["latency"][k] for k, _ in keys]
        base = [row["baseline_latency"].get(k, float("nan")) for k, _ in keys]
        ax.bar([i - 0.2 for i in x], ours, 0.4, color=_OURS, label="raygrain")
        label = row.get("baseline_name", "baseline")
        ax.bar([i + 0.2 for i in x], base, 0.4, color=_BASE, label=label)
        ax.set_xticks(list(x), [label for _, label in keys])
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(_plain)
        ax.yaxis.set_minor_formatter(_plain_minor)
        ax.set_ylabel("ms")
        ax.set_title("\n".join(textwrap.wrap(row["name"], 38)), fontsize=9)
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(chosen) :]:
        ax.set_visible(False)
    fig.suptitle("Latency percentiles per call (median round), raygrain beside its baseline")
    fig.tight_layout()
    return fig


def _ratios(plt: Any, rows: list[Row]) -> Any:
    shown = [r for r in rows if _finite(r.get("ratio")) and r["ratio"] > 0]
    if not shown:
        return None
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(shown) + 1.6))
    y = range(len(shown))
    colors = [
        "#2ca02c" if r.get("meets_target") else "#d62728" if "meets_target" in r else "#7f7f7f"
        for r in shown
    ]
    ax.barh(list(y), [r["ratio"] for r in shown], color=colors)
    labels = [
        f"{r['name']} ({'lower' if r.get('lower_is_better') else 'higher'} is better)"
        for r in shown
    ]
    ax.set_yticks(list(y), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    for index, row in enumerate(shown):
        text = f"{row['ratio']:.3g}x" + (f"  target {row['target']}" if "target" in row else "")
        where = (row["ratio"], index)
        ax.annotate(text, where, textcoords="offset points", xytext=(4, -3), fontsize=8)
    ax.set_xlabel("raygrain / baseline (log scale; green: meets target, red: misses it)")
    ax.set_title("Every figure beside its baseline")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    return fig


def _timelines(plt: Any, rows: list[Row]) -> Any:
    chosen = [r for r in rows if r.get("timeline")]
    if not chosen:
        return None
    heights = [1.2 + 0.45 * len(r["timeline"]) for r in chosen]
    fig, axes = plt.subplots(
        len(chosen),
        1,
        figsize=(10, sum(heights)),
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    for ax, row in zip(axes.flat, chosen, strict=False):
        points = sorted((float(t), event) for t, event in row["timeline"])
        events = [(t, e) for t, e in points if not isinstance(e, (int, float))]
        measured = [(t, e) for t, e in points if isinstance(e, (int, float))]
        # Events as a ladder, one line each in time order, so that labels never overlap.
        for level, (t, event) in enumerate(events):
            y = len(events) - level
            ax.plot([t, t], [0, y], ":", color="#999999", linewidth=0.8)
            ax.plot([t], [y], "o", color=_BASE)
            ax.annotate(
                f"{t:.2f} s  {event}",
                (t, y),
                textcoords="offset points",
                xytext=(6, -3),
                fontsize=8,
            )
        ax.set_ylim(0, len(events) + 0.8)
        ax.set_yticks([])
        last = max(t for t, _ in points) if points else 1.0
        ax.set_xlim(min(0.0, points[0][0]) - 0.02 * last, last * 1.45 + 0.1)
        if measured:  # a measured series over time, e.g. successful calls per interval
            series = ax.twinx()
            series.plot([t for t, _ in measured], [e for _, e in measured], "-", color=_OURS)
            series.set_ylabel(row.get("timeline_unit", "value"), color=_OURS)
        ax.set_xlabel("seconds")
        ax.set_title(row["name"], fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle("Failover timeline")
    fig.tight_layout()
    return fig


def _plain(value: float, _position: int) -> str:
    # Log axes label "6x10^1" by default; milliseconds read better as 60.
    return f"{value:g}"


def _plain_minor(value: float, _position: int) -> str:
    # Label 2s and 5s between the decades only: every minor tick labelled is unreadable.
    if value <= 0:
        return ""
    leading = round(value / 10 ** math.floor(math.log10(value)))
    return f"{value:g}" if leading in (2, 5) else ""


def _finite(*values: Any) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
