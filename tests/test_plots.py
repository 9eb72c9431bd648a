"""The report's plots read at a glance: rendered with matplotlib's own renderer, no two drawn texts (annotations,
legend, titles, tick labels of either axis) overlap and none is cut off at the figure's edge, on synthetic reports
that crowd them; the metric axis is not blown up when nothing changed; the same report gives the same PNG bytes."""
from __future__ import annotations

import itertools

import pytest
from matplotlib.text import Text

from compressor.report.plots import accuracy_vs_size, accuracy_vs_size_figure, latency_bars, latency_figure


def report(points: list[tuple[str, int, float]], metric: str = "accuracy", higher_is_better: bool = True,
           artifacts: list[tuple[str, float]] = (("model.onnx", 0.024),)) -> dict:
    """A report.json with the baseline and stages at (name, stored bytes, metric value), in pipeline order."""
    (_, base_bytes, base_value), stages = points[0], points[1:]
    return {
        "threads": 1, "metric": {"name": metric, "higher_is_better": higher_is_better},
        "baseline": {"metric": metric, "value": base_value, "stored_bytes": base_bytes, "latency_ms": 0.041},
        "stages": [{"name": n, "bytes": b, "metric_value": v} for n, b, v in stages],
        "artifacts": [{"path": p, "latency_ms": ms} for p, ms in artifacts],
    }


CASES = {
    # a real run: shrink keeps the size and the accuracy, so baseline and shrink share a point
    "nearly equal size and metric": [("baseline", 188726, 96.94), ("shrink", 191544, 96.94),
                                     ("quantize", 47601, 96.94)],
    "a later stage bigger": [("baseline", 100000, 97.0), ("prune", 40000, 96.5), ("rpg", 90000, 96.8),
                             ("quantize", 30000, 96.6)],
    "all values equal": [("baseline", 50000, 97.2), ("shrink", 50000, 97.2), ("quantize", 50000, 97.2)],
    "sizes spanning 3x": [("baseline", 150000, 98.0), ("quantize", 50000, 97.5)],
    "sizes spanning 7x (the sample's sparse recipe)": [("baseline", 188726, 96.94), ("shrink", 188900, 96.94),
                                                      ("prune", 40000, 97.22), ("quantize", 27200, 97.22)],
    "sizes spanning 1000x": [("baseline", 40_000_000, 91.0), ("shrink", 39_000_000, 90.8),
                             ("prune", 400_000, 90.1), ("basis", 380_000, 90.1), ("quantize", 40_000, 89.7)],
    "a long plugin stage name": [("baseline", 2_000_000, 99.1), ("my_plugin_structured_low_rank", 1_900_000, 99.0),
                                 ("quantize", 500_000, 98.95)],
}


def drawn_texts(fig) -> list[Text]:
    """Every non-empty visible text of the figure that the renderer draws: tick labels only at ticks inside the
    axis's view (matplotlib keeps Text objects for ticks it does not draw)."""
    fig.canvas.draw()
    undrawn = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            pad = (hi - lo) * 1e-9
            for locs, ticks in ((axis.get_majorticklocs(), axis.get_major_ticks()),
                                (axis.get_minorticklocs(), axis.get_minor_ticks())):
                for loc, tick in zip(locs, ticks):
                    if not lo - pad <= loc <= hi + pad:
                        undrawn.update({id(tick.label1), id(tick.label2)})
    return [t for t in fig.findobj(Text)
            if t.get_visible() and t.get_text().strip() and id(t) not in undrawn]


def overlaps(fig) -> list[str]:
    """Pairs of drawn texts whose bounding boxes overlap, and texts cut off at the figure's edge."""
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in drawn_texts(fig)]
    found = [f"{a!r} overlaps {b!r}" for (a, ba), (b, bb) in itertools.combinations(boxes, 2) if ba.overlaps(bb)]
    edge = fig.bbox.padded(0.5)
    return found + [f"{a!r} cut off" for a, box in boxes
                    if not (edge.x0 <= box.x0 and box.x1 <= edge.x1 and edge.y0 <= box.y0 and box.y1 <= edge.y1)]


@pytest.mark.parametrize("case", sorted(CASES))
def test_accuracy_vs_size_has_no_overlapping_text(case):
    fig = accuracy_vs_size_figure(report(CASES[case]))
    assert overlaps(fig) == []


def test_lower_is_better_metric_has_no_overlapping_text():
    fig = accuracy_vs_size_figure(report([("baseline", 300000, 0.0012), ("prune", 120000, 0.0031),
                                          ("quantize", 40000, 0.0035)], "mse", higher_is_better=False))
    assert overlaps(fig) == []


def test_points_are_numbered_in_pipeline_order_and_named():
    points = CASES["a later stage bigger"]
    fig = accuracy_vs_size_figure(report(points))
    ax = fig.axes[0]
    assert list(ax.lines[0].get_xdata()) == [b for _, b, _ in points]  # the line follows the pipeline
    text = " ".join(" ".join(t.get_text().split()) for t in drawn_texts(fig))  # spaces collapsed
    positions = [text.index(f"{i} {name} ") for i, (name, _, _) in enumerate(points)]
    assert positions == sorted(positions)


def test_metric_axis_is_not_blown_up_when_nothing_changed():
    ax = accuracy_vs_size_figure(report(CASES["all values equal"])).axes[0]
    lo, hi = ax.get_ylim()
    assert lo < 97.2 < hi and 1.0 <= hi - lo <= 2.0


def test_metric_axis_pads_around_the_data():
    ax = accuracy_vs_size_figure(report(CASES["sizes spanning 1000x"])).axes[0]
    lo, hi = ax.get_ylim()
    assert lo < 89.7 and 91.0 < hi and hi - lo < 2 * (91.0 - 89.7)


@pytest.mark.parametrize("case", ["sizes spanning 3x", "sizes spanning 1000x", "all values equal"])
def test_size_ticks_are_few_and_in_byte_units(case):
    fig = accuracy_vs_size_figure(report(CASES[case]))
    labels = [t.get_text() for t in drawn_texts(fig) if t in fig.axes[0].xaxis.get_ticklabels(which="both")]
    assert 2 <= len(labels) <= 6, labels
    assert all(label.split()[-1] in ("B", "kB", "MB", "GB") for label in labels), labels


@pytest.mark.parametrize("names", [
    ("model.onnx",),
    ("model.onnx", "model.int8.per_channel.static.onnx", "a_very_long_artifact_name_from_a_plugin_exporter.onnx"),
])
@pytest.mark.parametrize("spread", [False, True])
def test_latency_bars_have_no_overlapping_or_cut_off_text(names, spread):
    rep = report(CASES["sizes spanning 3x"], artifacts=[(n, 0.02 + 0.01 * i) for i, n in enumerate(names)])
    if spread:  # the whiskers' explanation makes the axis label longer
        for entry in (rep["baseline"], *rep["artifacts"]):
            entry["latency_spread_ms"] = [entry["latency_ms"] * 0.9, entry["latency_ms"] * 1.2]
    assert overlaps(latency_figure(rep)) == []


def test_same_report_gives_the_same_png_bytes(tmp_path):
    rep = report(CASES["a later stage bigger"])
    for name, save in (("a", accuracy_vs_size), ("l", latency_bars)):
        assert save(rep, tmp_path / f"{name}1.png") and save(rep, tmp_path / f"{name}2.png")
        assert (tmp_path / f"{name}1.png").read_bytes() == (tmp_path / f"{name}2.png").read_bytes()


def test_sparsity_plot_with_long_layer_names_warns_nothing(tmp_path):
    """Rotated names too long to lay out: matplotlib's tight-layout warning stays off the user's terminal."""
    import warnings

    from compressor.report.sparsity import _plot

    layers = [{"name": f"encoder.layer.{i}.attention.self.query_key_value.weight" * 3, "sparsity": 0.5}
              for i in range(12)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _plot(layers, tmp_path / "sparsity.png")
    assert (tmp_path / "sparsity.png").stat().st_size > 0
