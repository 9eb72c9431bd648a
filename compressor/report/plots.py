"""Report plots (PNG, matplotlib Agg, no timestamps so reruns are byte-identical), made to be read at a glance.

accuracy_vs_size: the points are numbered in pipeline order (0 the baseline, then each stage) and a key beside the
plot names each step with its size and metric. Names written next to the points overprint as soon as a stage keeps
the size (shrink, or a stage that stores its zeros densely); a number per point is small, points a few pixels apart
share one label ("0,1"), and each label goes to the first of several offsets around its point where it overlaps no
other label or marker and stays inside the axes. The line joins the points in pipeline order, so when a later stage
is bigger it turns back, and the numbers say which way it runs. Sizes are on a log axis with a few round byte counts
in B / kB / MB (thinned until their labels do not touch); the metric axis pads around the data with at least one
point of span, so a run that changed nothing is not drawn as noise over ten points.

latency: one bar per timed artifact beside the fp32 original, its median labelled and its p10-p90 as whiskers when
the report records them; the figure widens with the longest artifact name instead of cutting it.

Figures are built by `*_figure` (returned, for tests that measure the rendered text) and saved by the functions
the run calls; matplotlib is imported only when a plot is made.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

from compressor.report.build import UNITS, human_bytes, metric_text

DPI = 100
FONT = 8
NEAR_PX = 14        # points closer than this share one step label
MARKER_PX = 4       # half the side of the square a marker covers, kept free of labels
MAX_SIZE_TICKS = 6
COLOR, SLOWER = "#4C72B0", "#C44E52"
# label offsets around a point, in typographic points: nearest first, then further out in eight directions
OFFSETS = [(dx * r, dy * r) for r in (5, 12, 20) for dx, dy in
           ((1, 1), (1, -1), (-1, 1), (-1, -1), (0, 1.2), (0, -1.2), (1.2, 0), (-1.2, 0))]


def _figure(width: float, height: float):
    """A figure on its own Agg canvas (no pyplot: no global state, nothing to close), laid out by matplotlib's
    constrained layout so titles, labels and the key get their room."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _have_matplotlib() -> bool:
    """A missing matplotlib costs the plots, not the run (the report lists the plots it wrote)."""
    return importlib.util.find_spec("matplotlib") is not None


def _save(fig, path: Path) -> bool:
    if fig is None:
        return False
    fig.savefig(path, metadata={"Software": None})
    return True


def accuracy_vs_size(report: dict[str, Any], path: Path) -> bool:
    """Write accuracy_vs_size.png; False when there is nothing to draw or no matplotlib."""
    return _save(accuracy_vs_size_figure(report), path)


def latency_bars(report: dict[str, Any], path: Path) -> bool:
    """Write latency.png; False when nothing was timed or there is no matplotlib."""
    return _save(latency_figure(report), path)


def _points(report: dict[str, Any]) -> list[tuple[str, float, float]]:
    """(stage, stored bytes, metric) of the baseline and of each stage that recorded both, in pipeline order."""
    b = report["baseline"]
    points = [("baseline", b["stored_bytes"], b["value"])]
    return points + [(s["name"], s["bytes"], s["metric_value"]) for s in report["stages"]
                     if s.get("bytes") and s.get("metric_value") is not None]


def accuracy_vs_size_figure(report: dict[str, Any]):
    """Metric against stored bytes for the baseline and after each stage (module docstring)."""
    if not _have_matplotlib():
        return None
    points = _points(report)
    metric = report["baseline"]["metric"]
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    key_rows, key_title = _key(points, metric)
    fig = _figure(4.6 + 0.068 * max(map(len, key_rows + [key_title])), 3.4)
    ax = fig.add_subplot()
    ax.plot(xs, ys, "-o", color=COLOR, markersize=5, linewidth=1.2)
    _metric_axis(ax, ys, metric, report)
    _size_axis(ax, xs)
    ax.set_title(f"{metric} vs size, steps in pipeline order", fontsize=10)
    ax.grid(True, alpha=0.3)
    _legend_key(fig, key_rows, key_title)
    _thin_size_ticks(fig, ax)
    fig.set_layout_engine("none")  # the layout is final: labels are placed in pixels from here on
    _place_step_labels(fig, ax, xs, ys)
    return fig


def _key(points: list[tuple[str, float, float]], metric: str) -> tuple[list[str], str]:
    """The key's rows (step, stage, size, metric) in a fixed-width font, and its header."""
    width = max(len("stage"), *(len(name) for name, _, _ in points))
    unit = UNITS.get(metric, "").strip()
    head = f"{'#':>2}  {'stage':<{width}}  {'size':>9}  {metric} {unit}".rstrip()
    rows = [f"{i:>2}  {name:<{width}}  {human_bytes(x):>9}  {metric_text(metric, y)}"
            for i, (name, x, y) in enumerate(points)]
    return rows, head


def _legend_key(fig, rows: list[str], title: str) -> None:
    """The key as a text-only legend outside the axes, on the right (the layout makes room for it)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], linestyle="none") for _ in rows]
    mono = {"family": "monospace", "size": FONT}
    fig.legend(handles, rows, loc="outside right upper", prop=mono, title=title, title_fontproperties=mono,
               alignment="left", handlelength=0, handletextpad=0, frameon=False)


def _metric_axis(ax, ys: list[float], metric: str, report: dict[str, Any]) -> None:
    """Pad around the data, with a span of at least one point for percent/points metrics (a tenth of the value
    otherwise), so that equal values sit mid-axis instead of being stretched over meaningless ticks."""
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    lo, hi = min(ys), max(ys)
    least = 1.0 if metric in UNITS else max(abs(hi), abs(lo)) * 0.1 or 1.0
    if hi - lo < least:
        mid = (hi + lo) / 2
        lo, hi = mid - least / 2, mid + least / 2
    pad = 0.15 * (hi - lo)
    ax.set_ylim(lo - pad, hi + pad)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))
    ax.tick_params(labelsize=FONT)
    unit = {"accuracy": " %", "agreement": " %", "cosine": " (100 x mean cosine)"}.get(metric, "")
    better = "" if report.get("metric", {}).get("higher_is_better", True) else " (lower is better)"
    ax.set_ylabel(f"held-out {metric}{unit}{better}", fontsize=9)


def _size_axis(ax, xs: list[float]) -> None:
    """Log axis of stored bytes, padded by a factor of at least 1.3 either side, ticked at round byte counts."""
    from matplotlib.ticker import FuncFormatter, NullLocator

    lo, hi = min(xs), max(xs)
    factor = max(1.3, (hi / lo) ** 0.08)
    ax.set_xscale("log")
    ax.set_xlim(lo / factor, hi * factor)
    ax.set_xticks(size_ticks(lo / factor, hi * factor))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: bytes_tick(v)))
    ax.set_xlabel("stored bytes (smallest of raw / gzip)", fontsize=9)


def size_ticks(lo: float, hi: float) -> list[float]:
    """Round byte counts inside [lo, hi]: powers of ten, else 1-2-5 steps, else every digit, the first set with
    two ticks or more; every other one while there are more than MAX_SIZE_TICKS."""
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    ticks: list[float] = []
    for mantissas in ((1,), (1, 2, 5), range(1, 10)):
        ticks = [m * 10.0 ** d for d in decades for m in mantissas if lo <= m * 10.0 ** d <= hi]
        if len(ticks) >= 2:
            break
    while len(ticks) > MAX_SIZE_TICKS:
        ticks = ticks[::2]
    return ticks


def bytes_tick(n: float) -> str:
    """A round byte count in SI units without a needless decimal: 50 kB, 200 kB, 1 MB, 1.5 MB."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{round(n, 3):g} {unit}"
        n /= 1000
    return f"{n:g}"


def _overlapping(boxes) -> bool:
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def _thin_size_ticks(fig, ax) -> None:
    """Lay the figure out; while two size labels touch (a narrow axis, long labels), keep every other tick."""
    while True:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        ticks = list(ax.get_xticks())
        shown = [t for t in ax.xaxis.get_ticklabels() if t.get_text()]
        if len(ticks) < 2 or not _overlapping([t.get_window_extent(renderer) for t in shown]):
            return
        ax.set_xticks(ticks[::2])


def _clusters(pixels) -> list[list[int]]:
    """Point indices grouped where points lie within NEAR_PX of a group's first point (in pipeline order)."""
    groups: list[list[int]] = []
    for i, (px, py) in enumerate(pixels):
        for group in groups:
            gx, gy = pixels[group[0]]
            if (px - gx) ** 2 + (py - gy) ** 2 < NEAR_PX ** 2:
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


def _place_step_labels(fig, ax, xs: list[float], ys: list[float]) -> None:
    """Number each point (group) at the first offset whose label stays inside the axes and overlaps no marker and
    no label placed before it."""
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    pixels = [tuple(p) for p in ax.transData.transform(list(zip(xs, ys)))]
    taken = [Bbox.from_extents(x - MARKER_PX, y - MARKER_PX, x + MARKER_PX, y + MARKER_PX) for x, y in pixels]
    frame = ax.bbox
    for group in _clusters(pixels):
        text, anchor = ",".join(map(str, group)), (xs[group[0]], ys[group[0]])
        for i, (dx, dy) in enumerate(OFFSETS):
            ann = ax.annotate(text, anchor, xytext=(dx, dy), textcoords="offset points", fontsize=FONT,
                              fontweight="bold", color="#222222", ha=_align(dx, "left", "right"),
                              va=_align(dy, "bottom", "top"))
            box = ann.get_window_extent(renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if (inside and not any(box.overlaps(t) for t in taken)) or i == len(OFFSETS) - 1:
                taken.append(box)
                break
            ann.remove()


def _align(offset: float, positive: str, negative: str) -> str:
    """The text's alignment that makes it extend away from its point."""
    return positive if offset > 0 else negative if offset < 0 else "center"


def latency_figure(report: dict[str, Any]):
    """ONNX Runtime latency (batch 64) of the fp32 original beside each artifact that runs in ORT."""
    if not _have_matplotlib():
        return None
    base = report["baseline"]
    timed = [a for a in report["artifacts"] if a.get("latency_ms") is not None]
    if base.get("latency_ms") is None or not timed:
        return None
    rows = [("fp32 original", base["latency_ms"], base.get("latency_spread_ms"))]
    rows += [(a["path"], a["latency_ms"], a.get("latency_spread_ms")) for a in timed]
    fig = _figure(max(4.6, 3.6 + 0.07 * max(len(r[0]) for r in rows)), 1.5 + 0.38 * len(rows))
    ax = fig.add_subplot()
    _latency_bars_on(ax, rows, base["latency_ms"])
    spread = any(r[2] for r in rows)
    ax.set_xlabel(f"ms per batch of 64, {report.get('threads', 1)} thread(s)"
                  + ("\nwhiskers: p10-p90 of the timed runs" if spread else ""), fontsize=FONT)
    ax.set_title("ONNX Runtime latency (median)", fontsize=10)
    ax.tick_params(labelsize=FONT)
    ax.grid(True, axis="x", alpha=0.3)
    fig.canvas.draw()
    return fig


def _latency_bars_on(ax, rows: list[tuple[str, float, list[float] | None]], base: float) -> None:
    """Horizontal bars, top to bottom in the report's order, each labelled with its median past its whisker."""
    labels = [r[0] for r in rows][::-1]
    values = [r[1] for r in rows][::-1]
    spreads = [r[2] or [r[1], r[1]] for r in rows][::-1]
    colors = ([SLOWER if v > base else COLOR for v in values[:-1]] + ["#8C8C8C"])
    err = [[max(0.0, v - s[0]) for v, s in zip(values, spreads)], [max(0.0, s[1] - v) for v, s in zip(values, spreads)]]
    ax.barh(range(len(rows)), values, color=colors, xerr=err, ecolor="#333333", capsize=2)
    ax.set_yticks(range(len(rows)), labels)
    ends = [max(v, s[1]) for v, s in zip(values, spreads)]
    for i, (v, end) in enumerate(zip(values, ends)):
        ax.annotate(f"{v:.3g} ms", (end, i), xytext=(4, 0), textcoords="offset points", va="center", fontsize=FONT)
    ax.set_xlim(0, max(ends) * 1.45)
