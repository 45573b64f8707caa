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
_BETTER, _WORSE, _SAME = "#2ca02c", "#d62728", "#7f7f7f"


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
        fig.savefig(path, dpi=110, bbox_inches="tight")  # (tight: every label inside)
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
    fig, ax = plt.subplots(figsize=(8, 5.5), layout="constrained")
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
                bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "edgecolor": "none"},
            )
    unit = points[0]["unit"]
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(_plain)
    values = [r[side] for rows_ in series.values() for r in rows_ for side in ("value", "baseline")]
    if max(values) / min(values) >= 10:  # a log axis only where the figures span decades
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(_minor_labels(ax.yaxis))
    else:
        ax.set_ylim(0, max(values) * 1.12)
    ax.yaxis.set_major_formatter(_plain)
    ax.margins(x=0.12)
    ax.set_xlabel("concurrent callers (N callers over N actors)")
    ax.set_ylabel(f"{unit} (median round)")
    ax.set_title(f"{unit} against concurrent callers (solid: raygrain, dashed: baseline)")
    ax.grid(True, which="both", alpha=0.3)
    # Below the axes, where it cannot cover a point, whatever the figures turn out to be.
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
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
    fig, axes = plt.subplots(
        lines, columns, figsize=(4.8 * columns, 3.9 * lines), squeeze=False, layout="constrained"
    )
    for ax, row in zip(axes.flat, chosen, strict=False):
        keys = [(k, label) for k, label in _PERCENTILES if k in row["latency"]]
        x = list(range(len(keys)))
        ours = [row["latency"][k] for k, _ in keys]
        base = [row["baseline_latency"].get(k, float("nan")) for k, _ in keys]
        # Points joined by lines, not bars: the spread between p50 and p99.9 needs a log axis,
        # and a bar's length means nothing on one.
        ax.plot(x, ours, "o-", color=_OURS, label="raygrain")
        label = row.get("baseline_name", "baseline")
        ax.plot(x, base, "s--", color=_BASE, label="\n".join(textwrap.wrap(label, 44)))
        ax.set_xticks(x, [label for _, label in keys])
        ax.set_xlim(-0.4, len(keys) - 0.6)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(_plain)
        ax.yaxis.set_minor_formatter(_minor_labels(ax.yaxis))
        operation = _operation(row["unit"])
        ax.set_ylabel(f"ms per {operation}")
        title = f"ms per {operation}: {_context(row)}"
        ax.set_title("\n".join(textwrap.wrap(title, 46)), fontsize=9)
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    for ax in list(axes.flat)[len(chosen) :]:
        ax.set_visible(False)
    fig.suptitle("Latency percentiles in ms (median round): raygrain beside its baseline")
    return fig


def _ratios(plt: Any, rows: list[Row]) -> Any:
    shown = [r for r in rows if _finite(r.get("ratio")) and r["ratio"] > 0]
    if not shown:
        return None
    fig, ax = plt.subplots(figsize=(11, 0.42 * len(shown) + 1.8), layout="constrained")
    y = list(range(len(shown)))
    ratios = [r["ratio"] for r in shown]
    colors = [_BETTER if _better(r) else _WORSE if _better(r) is False else _SAME for r in shown]
    # Points, not bars, on the log axis (a bar there starts at an arbitrary value); the colour
    # says better or worse than the baseline, whichever way the figure is better.
    ax.scatter(ratios, y, s=60, color=colors, zorder=3)
    labels = [
        "\n".join(
            textwrap.wrap(
                f"{r['name']} ({'lower' if r.get('lower_is_better') else 'higher'} is better)", 70
            )
        )
        for r in shown
    ]
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(_times)
    ax.xaxis.set_minor_formatter(_times_minor)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    # Room on both sides for the labels, so that they stay inside the axes.
    low, high = min([*ratios, 1.0]), max([*ratios, 1.0])
    ax.set_xlim(low / 2.5, high * 6)
    ax.axvline(1.0, color="black", linewidth=0.8, zorder=2)
    for index, row in enumerate(shown):
        ax.annotate(
            f"{row['ratio']:.3g}x",
            (row["ratio"], index),
            textcoords="offset points",
            xytext=(8, -3),
            fontsize=8,
            bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none"},
            zorder=4,
        )
    ax.set_xlabel(
        "raygrain / baseline, times (log scale; 1x: as the baseline)\n"
        "green: better than the baseline, red: worse"
    )
    ax.set_title("Each figure as a multiple of its baseline (x)")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax.grid(True, axis="y", alpha=0.15)
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
        last = max(t for t, _ in points) if points else 1.0
        for level, (t, event) in enumerate(events):
            y = len(events) - level
            ax.plot([t, t], [0, y], ":", color="#999999", linewidth=0.8)
            ax.plot([t], [y], "o", color=_BASE)
            # Late events label to their left, so that no label runs out of the axes.
            left = t > 0.5 * last
            ax.annotate(
                f"{event}  {t:.2f} s" if left else f"{t:.2f} s  {event}",
                (t, y),
                textcoords="offset points",
                xytext=(-6, -3) if left else (6, -3),
                ha="right" if left else "left",
                fontsize=8,
            )
        ax.set_ylim(0, len(events) + 0.8)
        ax.set_yticks([])
        ax.set_xlim(min(0.0, points[0][0]) - 0.04 * last, last * 1.08 + 0.1)
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


def _better(row: Row) -> bool | None:
    """Whether raygrain did better than the baseline on this figure (None: the same)."""
    ratio = row["ratio"]
    if abs(ratio - 1.0) < 0.01:
        return None
    return ratio < 1.0 if row.get("lower_is_better") else ratio > 1.0


def _operation(unit: str) -> str:
    """ "calls/s" -> "call": what one latency sample timed."""
    return unit.removesuffix("/s").removesuffix("s") or "operation"


def _context(row: Row) -> str:
    """The figure's name without its unit: "in-process calls/s, one caller" -> "in-process,
    one caller" (for a panel whose axis has another unit)."""
    return " ".join(row["name"].replace(f" {row['unit']}", "").split())


def _times(value: float, _position: int) -> str:
    return f"{value:g}x"


def _times_minor(value: float, _position: int) -> str:
    text = _plain_minor(value, _position)
    return f"{text}x" if text else ""


def _plain(value: float, _position: int) -> str:
    # Log axes label "6x10^1" by default; milliseconds read better as 60.
    return f"{value:,.0f}" if value >= 1000 else f"{value:g}"


def _plain_minor(value: float, _position: int) -> str:
    # Label 2s, 3s and 5s between the decades only: every minor tick labelled is unreadable.
    if value <= 0:
        return ""
    leading = round(value / 10 ** math.floor(math.log10(value)))
    return _plain(value, _position) if leading in (2, 3, 5) else ""


def _minor_labels(axis: Any) -> Any:
    """The minor-tick labeller for ``axis``: 2s, 3s and 5s, or every minor tick when the axis
    spans less than a decade (it may then hold no 2, 3 or 5 at all, and no label)."""

    def label(value: float, position: int) -> str:
        low, high = sorted(axis.get_view_interval())
        if low > 0 and high / low < 4:
            return _plain(value, position)
        return _plain_minor(value, position)

    return label


def _finite(*values: Any) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
