"""The report: `report.json` (machine-readable), `report.md` (a CI job summary as is), a rich table.

Sizes come from the files written (raw and gzip), never estimates; the metric is the run's (accuracy/agreement in
percent, cosine in points of 100 x mean, mse raw); a drop is how much worse, in those units (judge/budget.py).
"""
from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from compressor.io.load import source_bytes
from compressor.io.onnx_files import write_bytes_atomic
from compressor.judge.budget import drop
from compressor.registry import plugin_metrics
from compressor.report.cpu import cpu_info
from compressor.report.sparsity import markdown_lines
from compressor.verify.gates import evaluate_gates
from compressor.version import __version__

UNITS = {"accuracy": "%", "agreement": "%", "cosine": " pts"}  # cosine: 100 x mean cosine to the original


def environment() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    return {"compressor": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version(), **cpu_info()}


def build_report(*, options, ctx, baseline, base_params: int, base_bytes: int, base_stored_bytes: int,
                 records: list[dict],
                 artifacts: list[dict], notes: list[str], seconds: float) -> dict[str, Any]:
    final = artifacts[0]["metric_value"]
    up = ctx.metric.higher_is_better
    worse = drop(baseline.value, final, up)
    lower = frozenset(n for n, f in plugin_metrics().items() if getattr(f, "lower_is_better", False))
    gates = evaluate_gates(baseline.value, final, artifacts[0].get("metric_extra", {}), baseline.name,
                           artifacts[0]["size"], options.max_drop, options.min_recovery, options.max_bytes,
                           options.floors, up, lower)
    gates += [{"name": f"output:{o['output']}", "value": o["drop"], "limit": o["limit"], "passed": o["passed"]}
              for o in artifacts[0].get("outputs", [])]  # every other output of model.onnx (verify/outputs.py)
    passed = all(g["passed"] for g in gates)
    return {
        "verdict": "pass" if passed else "fail",
        "model": {"path": str(options.model), "format": ctx.loaded.format, "sha256": ctx.loaded.sha256},
        "pipeline": [r["name"] for r in records] or [],
        "seed": options.seed,
        "threads": options.threads,
        "precision": options.precision,
        "data": {"heldout": str(options.data), "train": _s(options.train_data),
                 "val": ctx.val.source if ctx.val is not None else None,
                 "calib": ctx.calib.source if ctx.calib is not None else None},
        "metric": {"name": ctx.metric.name, "reason": ctx.metric.reason, "higher_is_better": up,
                   "unit": ctx.metric.unit.strip()},
        "baseline": {"metric": baseline.name, "value": baseline.value, "params": base_params, "bytes": base_bytes,
                     "file_bytes": source_bytes(Path(options.model)),
                     "stored_bytes": base_stored_bytes, **baseline.extra},
        "stages": records,
        "artifacts": artifacts,
        "gate": {"metric": baseline.name, "max_drop": options.max_drop, "confidence": options.confidence,
                 "baseline": baseline.value,
                 "final": final, "drop": round(worse, 6), "higher_is_better": up, "passed": passed, "gates": gates,
                 "failed": [g["name"] for g in gates if not g["passed"]]},
        "notes": [f"metric: {ctx.metric.name} ({ctx.metric.reason})", *notes],
        "seconds": round(seconds, 2),
        "environment": environment(),
    }


def _s(p) -> str | None:
    return None if p is None else str(p)


def human_bytes(n: int | None) -> str:
    """Bytes in SI units (1 kB = 1000 B), everywhere the tool prints a size."""
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(round(n, 1)) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def size_headline(artifact: dict[str, Any], fp32_bytes: int) -> str:
    """An artifact's raw bytes over the fp32 weights first, gzip beside it, labelled; when only gzip saves (pruned
    zeros stored densely in the graph), it says so."""
    raw, gz = artifact["bytes"], artifact["gzip_bytes"]
    ratio = (lambda n: n / fp32_bytes if fp32_bytes else 0.0)
    text = f"{human_bytes(raw)} = {ratio(raw):.2f}x the fp32 weights (gzip {human_bytes(gz)}, {ratio(gz):.2f}x"
    if ratio(raw) >= 0.9 and ratio(gz) < 0.75 * ratio(raw):
        text += ": the saving is in gzip and model.safetensors only, the raw graph stores zeros densely"
    return text + ")"


def verdict_line(report: dict[str, Any]) -> str:
    g = report["gate"]
    onnx_art = report["artifacts"][0]
    word = "PASS" if g["passed"] else "FAIL (" + ", ".join(g.get("failed", [])) + ")"
    unit = UNITS.get(g["metric"], "")
    change = "drop" if g.get("higher_is_better", True) else "rise"
    fmt = ".2f" if unit else ".4g"
    return (f"{word}: {g['metric']} {g['baseline']:{fmt}}{unit} -> {g['final']:{fmt}}{unit} ({change} "
            f"{g['drop']:{fmt}}{' points' if unit else ''}, max {g['max_drop']:.2f}); model.onnx "
            + size_headline(onnx_art, report["baseline"]["bytes"]))


def metric_text(name: str, value: float | None) -> str:
    """A metric value as the tables print it: two decimals for percent/points, four significant digits else."""
    return "-" if value is None else (f"{value:.2f}" if name in UNITS else f"{value:.4g}")


def _stage_rows(report: dict[str, Any]) -> list[list[str]]:
    b = report["baseline"]
    m = b["metric"]
    rows = [["baseline", metric_text(m, b['value']), f"{b['params']:,}", f"{b['params']:,}", f"{b['params']:,}", "-"]]
    for r in report["stages"]:
        rows.append([r["name"], metric_text(m, r['metric_value']), f"{r['params']:,}", f"{r['nonzeros']:,}",
                     f"{r['dof']:,}", f"{r['seconds']:.1f}"])
    return rows


def _artifact_rows(report: dict[str, Any]) -> list[list[str]]:
    b, m = report["baseline"], report["baseline"]["metric"]
    rows = [] if b.get("latency_ms") is None else [
        ["fp32 original (weights; ONNX timed)", human_bytes(b["bytes"]), "-", metric_text(m, b["value"]),
         f"{b['latency_ms']:.2f}"]]
    for a in report["artifacts"]:
        lat = "-" if a.get("latency_ms") is None else f"{a['latency_ms']:.2f}"
        rows.append([a["path"], human_bytes(a["bytes"]), human_bytes(a["gzip_bytes"]), metric_text(m, a["metric_value"]),
                     lat])
    return rows


STAGE_HEADER = ["stage", "metric", "params", "nonzeros", "DoF", "seconds"]
ARTIFACT_HEADER = ["artifact", "bytes", "gzip", "metric", "ORT ms (batch 64)"]


def _headers(report: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The table headers, naming the run's metric and unit (e.g. "cosine pts", "accuracy %", "mse")."""
    m = report.get("metric", {}).get("name") or report["baseline"]["metric"]
    label = f"{m} {UNITS.get(m, '').strip()}".strip()
    return ([h if h != "metric" else label for h in STAGE_HEADER],
            [h if h != "metric" else label for h in ARTIFACT_HEADER])


GATE_LABELS = {"max_drop": "max_drop (points below baseline)", "min_recovery": "min_recovery (final / baseline)",
               "max_bytes": "max_bytes (model.onnx, smallest of raw/gzip)"}


def _num(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) else f"{v:.4g}"


def markdown(report: dict[str, Any]) -> str:
    g = report["gate"]
    lines = [f"## compressor: {'✅' if g['passed'] else '❌'} {verdict_line(report)}", ""]
    lines.append(f"Model `{report['model']['path']}` ({report['model']['format']}), pipeline "
                 f"`{','.join(report['pipeline']) or '(none)'}`, seed {report['seed']}, "
                 f"held-out `{report['data']['heldout']}`.")
    lines.append("")
    stage_header, artifact_header = _headers(report)
    for header, rows in ((stage_header, _stage_rows(report)), (artifact_header, _artifact_rows(report))):
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines.append("")
    if report.get("sparsity"):
        lines += markdown_lines(report["sparsity"])
    lines.append("| gate | value | limit | passed |")
    lines.append("|---|---|---|---|")
    for gate in g.get("gates", []):
        lines.append(f"| {GATE_LABELS.get(gate['name'], gate['name'])} | {_num(gate['value'])} | "
                     f"{_num(gate['limit'])} | {'yes' if gate['passed'] else '**NO**'} |")
    if g.get("failed"):
        lines.append("")
        lines.append(f"Failed gates: {', '.join(g['failed'])}")
    lines.append("")
    decisions = [f"- **{r['name']}**: {r['decision']}" for r in report["stages"] if r.get("decision")]
    if decisions:
        lines += ["Decisions:", *decisions, ""]
    notes = list(report.get("notes", []))
    for r in report["stages"]:
        notes += [f"{r['name']}: {n}" for n in r.get("notes", [])]
    onnx_art = report["artifacts"][0]
    notes.append(f"ONNX fp32 export vs torch: max abs diff {onnx_art['parity_max_abs_diff_fp32_vs_torch']:.2e} "
                 f"(first {onnx_art.get('parity_samples', 'all')} held-out samples)")
    if notes:
        lines.append("Notes:")
        lines += [f"- {n}" for n in notes]
        lines.append("")
    env = report["environment"]
    lines.append("<sub>" + ", ".join(f"{k} {v}" for k, v in env.items()) + "</sub>")
    return "\n".join(lines) + "\n"


def print_report(report: dict[str, Any], console: Console, verbose: bool = False) -> None:
    """The tables, then one line per stage saying what it decided and its warnings (`verbose`: every note of each
    stage), then the run's notes."""
    stage_header, artifact_header = _headers(report)
    for title, header, rows in (("Stages (held-out)", stage_header, _stage_rows(report)),
                                ("Artifacts", artifact_header, _artifact_rows(report))):
        table = Table(title=title, title_justify="left")
        for i, h in enumerate(header):
            table.add_column(h, justify="left" if i == 0 else "right")
        for r in rows:
            table.add_row(*r)
        console.print(table)
    for r in report["stages"]:  # what each stage decided and why, one line each (the rest is in report.md)
        if r.get("decision"):
            console.print(f"[bold]{r['name']}[/bold]: {escape(r['decision'])}", highlight=False)
        for n in r.get("notes", []):  # a stage's warnings always show; its other notes with --verbose
            if n != r.get("decision") and (verbose or n.startswith("WARNING")):
                console.print(f"  [dim]{escape(n)}[/dim]" if verbose else f"  [yellow]{escape(n)}[/yellow]",
                              highlight=False)
    for n in report.get("notes", []):
        console.print(f"[dim]note: {escape(n)}[/dim]", highlight=False)


def write_reports(report: dict[str, Any], out) -> None:
    write_bytes_atomic(out.path("report.json"), (json.dumps(report, indent=2, sort_keys=False) + "\n").encode())
    write_bytes_atomic(out.path("report.md"), markdown(report).encode())
