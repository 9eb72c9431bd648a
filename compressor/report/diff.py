"""`compress diff report_a.json report_b.json`: compare two runs (e.g. a pull request that changes a recipe).

Two runs of different source models (their sha256 differ) are refused unless the caller allows it: every change
would then compare two models, not two compressions. A latency is shown as the median with the [p10, p90] of its
run's timed runs, and a change whose two intervals overlap is marked "within noise": one run's own scatter already
covers it. Every cell says something: a value only one run recorded reads "not recorded" (its change says which run
has it), and a quantity neither run recorded has no row.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table

from compressor.errors import DataError, UsageError

MISSING = "not recorded"
Row = tuple[str, str, str, str]


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


def _cell(v: Any, fmt: str) -> str:
    return MISSING if v is None else format(v, fmt)


def _change(x: Any, y: Any, fmt: str, rel: bool = False) -> str:
    """B minus A (and relative to A with `rel`); which run lacks the value when one does."""
    if x is None or y is None:
        return "only in B" if x is None else "only in A"
    d = y - x
    text = format(d, "+" + fmt)
    if rel and x:
        text += f" ({d / x:+.1%})"
    return text


def _row(label: str, x: Any, y: Any, fmt: str, rel: bool = False) -> list[Row]:
    """One row, or none when neither run recorded the quantity (no all-"not recorded" rows)."""
    if x is None and y is None:
        return []
    return [(label, _cell(x, fmt), _cell(y, fmt), _change(x, y, fmt, rel))]


def _text_row(label: str, x: str, y: str) -> Row:
    return (label, x, y, "same" if x == y else "changed")


def _overlap(i: list[float] | None, j: list[float] | None) -> bool:
    return i is not None and j is not None and i[0] <= j[1] and j[0] <= i[1]


def _latency_row(label: str, x: float | None, xs: list[float] | None, y: float | None,
                 ys: list[float] | None, fmt: str = ".3f", spread_label: str = ", median (p10-p90)") -> list[Row]:
    """A median with its [p10, p90] where the run recorded one; a change whose intervals overlap is timing noise,
    not a difference the two runs can show."""
    if x is None and y is None:
        return []
    spread = xs is not None or ys is not None

    def cell(v, s):
        return MISSING if v is None else format(v, fmt) + (f" ({s[0]:{fmt}}-{s[1]:{fmt}})" if s else "")

    change = _change(x, y, fmt, rel=True) + (", within noise" if _overlap(xs, ys) else "")
    return [(label + (spread_label if spread else ""), cell(x, xs), cell(y, ys), change)]


def latency_ratio(artifact: dict[str, Any], baseline: dict[str, Any]) -> tuple[float | None, list[float] | None]:
    """An artifact's latency over its own run's fp32 timing (the machine's speed cancels out), and the ratio's
    interval from the two [p10, p90] spreads where both were recorded."""
    ms, fp32 = artifact.get("latency_ms"), artifact.get("fp32_baseline_latency_ms")
    if ms is None or not fp32:
        return None, None
    s, bs = artifact.get("latency_spread_ms"), baseline.get("latency_spread_ms")
    interval = [s[0] / bs[1], s[1] / bs[0]] if s and bs and bs[0] > 0 else None
    return ms / fp32, interval


def _artifact_rows(a: dict[str, Any], b: dict[str, Any]) -> list[Row]:
    """Bytes, gzip bytes, latency and latency ratio of every artifact either run wrote."""
    arts_a = {x["path"]: x for x in a["artifacts"]}
    arts_b = {x["path"]: x for x in b["artifacts"]}
    rows: list[Row] = []
    for path in dict.fromkeys([*arts_a, *arts_b]):
        xa, xb = arts_a.get(path, {}), arts_b.get(path, {})
        rows += _row(f"{path} bytes", xa.get("bytes"), xb.get("bytes"), ",d", rel=True)
        rows += _row(f"{path} gzip bytes", xa.get("gzip_bytes"), xb.get("gzip_bytes"), ",d", rel=True)
        rows += _latency_row(f"{path} ORT ms", xa.get("latency_ms"), xa.get("latency_spread_ms"),
                             xb.get("latency_ms"), xb.get("latency_spread_ms"))
        (ra, ia), (rb, ib) = latency_ratio(xa, a["baseline"]), latency_ratio(xb, b["baseline"])
        rows += _latency_row(f"{path} ORT ms / its run's fp32 ms", ra, ia, rb, ib, ".2f", " (range of the p10-p90s)")
    return rows


def diff_rows(a: dict[str, Any], b: dict[str, Any]) -> list[Row]:
    """(quantity, A, B, change) rows, every cell filled."""
    ga, gb = a["gate"], b["gate"]
    pipelines = [",".join(r.get("pipeline", [])) or "none" for r in (a, b)]
    rows = [_text_row("pipeline", *pipelines)]
    rows += _row(f"baseline {a['baseline']['metric']} %", a["baseline"]["value"], b["baseline"]["value"], ".2f")
    rows += _row("final metric %", ga.get("final"), gb.get("final"), ".2f")
    rows += _row("drop (points)", ga.get("drop"), gb.get("drop"), ".2f")
    rows += _latency_row("fp32 original ORT ms", a["baseline"].get("latency_ms"),
                         a["baseline"].get("latency_spread_ms"), b["baseline"].get("latency_ms"),
                         b["baseline"].get("latency_spread_ms"))
    rows += _artifact_rows(a, b)
    rows += _row("sparsity", a.get("sparsity", {}).get("sparsity"), b.get("sparsity", {}).get("sparsity"), ".2%")
    rows.append(_text_row("gate", a.get("verdict", str(ga["passed"])), b.get("verdict", str(gb["passed"]))))
    return rows


def check_sources(a: dict[str, Any], b: dict[str, Any], allow_different: bool) -> str | None:
    """Refuse two runs of different source models (their sha256 differ; exit 2), or with `allow_different` the
    warning to print above the comparison."""
    sa, sb = (r.get("model", {}).get("sha256") for r in (a, b))
    if not (sa and sb and sa != sb):
        return None
    which = f"sha256 {sa[:12]}... vs {sb[:12]}..."
    if not allow_different:
        raise UsageError(f"the two reports are runs of different source models ({which}): their changes would "
                         "compare models, not compressions; pass --allow-different-models to compare them anyway")
    return f"WARNING: the two runs compressed different source models ({which}): every change below compares " \
           "different models"


def load_pair(a_path: Path, b_path: Path, allow_different: bool) -> tuple[dict, dict, str | None]:
    """Both reports read and their sources checked: (A, B, the warning to print or None)."""
    a, b = read_report(a_path), read_report(b_path)
    return a, b, check_sources(a, b, allow_different)


def diff_markdown(a_path: Path, b_path: Path, allow_different: bool = False) -> str:
    """The comparison as a Markdown table (a pull request comment or job summary), the warning quoted above it."""
    a, b, warning = load_pair(a_path, b_path, allow_different)
    lines = [f"> {warning}", ""] if warning else []
    lines += [f"| quantity | A: `{a_path}` | B: `{b_path}` | change |", "|---|---|---|---|"]
    lines += [f"| {q} | {x} | {y} | {d} |" for q, x, y, d in diff_rows(a, b)]
    return "\n".join(lines) + "\n"


def diff_table(a_path: Path, b_path: Path, allow_different: bool = False) -> tuple[Table, str | None]:
    """The comparison as a terminal table, and the warning to print on stderr (or None)."""
    a, b, warning = load_pair(a_path, b_path, allow_different)
    table = Table(title=f"{a_path}  vs  {b_path}", title_justify="left")
    for col in ("quantity", "A", "B", "change"):
        table.add_column(col, justify="left" if col == "quantity" else "right")
    for row in diff_rows(a, b):
        table.add_row(*row)
    return table, warning
