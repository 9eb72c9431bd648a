"""Report plots (PNG, matplotlib Agg, no timestamps so reruns are byte-identical)."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt
    except Exception:
        return None


def latency_bars(report: dict[str, Any], path: Path) -> bool:
    """ONNX Runtime latency (batch 64) of the fp32 original beside each artifact that runs in ORT."""
    plt = _pyplot()
    base = report["baseline"].get("latency_ms")
    bars = [(a["path"], a["latency_ms"]) for a in report["artifacts"] if a.get("latency_ms") is not None]
    if plt is None or base is None or not bars:
        return False
    labels, values = ["fp32 original", *[b[0] for b in bars]], [base, *[b[1] for b in bars]]
    fig, ax = plt.subplots(figsize=(5, 2.4), dpi=100)
    ax.barh(labels, values, color=["#8C8C8C"] + ["#C44E52" if v > base else "#4C72B0" for v in values[1:]])
    ax.set_xlabel(f"ONNX Runtime ms per batch of 64 ({report.get('threads', 1)} thread(s))")
    ax.set_title("latency")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return True


def accuracy_vs_size(report: dict[str, Any], path: Path) -> bool:
    """Metric against stored bytes for the baseline and after each stage."""
    plt = _pyplot()
    if plt is None:
        return False
    b = report["baseline"]
    points = [("baseline", b["stored_bytes"], b["value"])]
    points += [(s["name"], s["bytes"], s["metric_value"]) for s in report["stages"] if s.get("bytes")]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    ax.plot(xs, ys, "-o", color="#4C72B0")
    for label, x, y in points:
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("stored bytes (smallest of raw / gzip)")
    unit = {"accuracy": " %", "agreement": " %", "cosine": " (100 x mean cosine)"}.get(b["metric"], "")
    better = "" if report.get("metric", {}).get("higher_is_better", True) else " (lower is better)"
    ax.set_ylabel(f"held-out {b['metric']}{unit}{better}")
    ax.set_title(f"{b['metric']} vs size")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return True
