"""`compress diff report_a.json report_b.json`: compare two runs (e.g. a pull request that changes a model)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compressor.errors import DataError


def read_report(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"report not found: {path}")
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a JSON report ({exc})")
    if not isinstance(report, dict) or not {"baseline", "artifacts", "gate"} <= set(report):
        raise DataError(f"{path}: not a compressor report.json (needs baseline, artifacts, gate)")
    return report


def diff_rows(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(quantity, A, B, change) rows."""
    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    def delta(x, y, fmt, rel=False):
        if x is None or y is None:
            return "-"
        d = y - x
        text = format(d, "+" + fmt)
        if rel and x:
            text += f" ({d / x:+.1%})"
        return text

    rows = [("pipeline", ",".join(a.get("pipeline", [])) or "-", ",".join(b.get("pipeline", [])) or "-", ""),
            (f"baseline {a['baseline']['metric']} %", num(a["baseline"]["value"], ".2f"),
             num(b["baseline"]["value"], ".2f"), delta(a["baseline"]["value"], b["baseline"]["value"], ".2f")),
            ("final metric %", num(a["gate"].get("final"), ".2f"), num(b["gate"].get("final"), ".2f"),
             delta(a["gate"].get("final"), b["gate"].get("final"), ".2f")),
            ("drop (points)", num(a["gate"]["drop"], ".2f"), num(b["gate"]["drop"], ".2f"),
             delta(a["gate"]["drop"], b["gate"]["drop"], ".2f"))]
    arts_a = {x["path"]: x for x in a["artifacts"]}
    arts_b = {x["path"]: x for x in b["artifacts"]}
    for path in list(dict.fromkeys([*arts_a, *arts_b])):
        xa, xb = arts_a.get(path, {}), arts_b.get(path, {})
        for key, label in (("bytes", "bytes"), ("gzip_bytes", "gzip bytes"), ("latency_ms", "ORT ms")):
            va, vb = xa.get(key), xb.get(key)
            if va is None and vb is None:
                continue  # e.g. model.safetensors is not timed
            fmt = ",d" if key != "latency_ms" else ".3f"
            rows.append((f"{path} {label}", num(va, fmt), num(vb, fmt), delta(va, vb, fmt, rel=True)))
        ra, rb = latency_ratio(xa), latency_ratio(xb)
        if ra is not None or rb is not None:  # each run's own fp32 timing: the machine's speed cancels out
            rows.append((f"{path} ORT ms / its run's fp32 ms", num(ra, ".2f"), num(rb, ".2f"), delta(ra, rb, ".2f")))
    if "sparsity" in a or "sparsity" in b:
        sa, sb = a.get("sparsity", {}).get("sparsity"), b.get("sparsity", {}).get("sparsity")
        rows.append(("sparsity", num(sa, ".2%"), num(sb, ".2%"), delta(sa, sb, ".2%")))
    rows.append(("gate", a["verdict"] if "verdict" in a else str(a["gate"]["passed"]),
                 b["verdict"] if "verdict" in b else str(b["gate"]["passed"]), ""))
    return rows


def latency_ratio(artifact: dict[str, Any]) -> float | None:
    ms, fp32 = artifact.get("latency_ms"), artifact.get("fp32_baseline_latency_ms")
    return ms / fp32 if ms is not None and fp32 else None


def source_warning(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """A warning when the two runs compressed different source models (their sha256 differ)."""
    sa, sb = (r.get("model", {}).get("sha256") for r in (a, b))
    if sa and sb and sa != sb:
        return (f"WARNING: the two runs compressed different source models (sha256 {sa[:12]}... vs {sb[:12]}...): "
                "every change below compares different models")
    return None


def diff_markdown(a_path: Path, b_path: Path) -> str:
    a, b = read_report(a_path), read_report(b_path)
    warning = source_warning(a, b)
    lines = [f"> {warning}", ""] if warning else []
    lines += [f"| quantity | A: `{a_path}` | B: `{b_path}` | change |", "|---|---|---|---|"]
    lines += [f"| {q} | {x} | {y} | {d} |" for q, x, y, d in diff_rows(a, b)]
    return "\n".join(lines) + "\n"
