"""CI gates: each failed gate is named in the report and makes the exit code 3.

- max_drop: the final artifact's metric may fall at most this many points below the baseline's;
- min_recovery: final / baseline metric at least this ratio (the recovery check llm-compressor's CI uses);
- max_bytes: the ONNX artifact's size (smallest of raw and gzip bytes) at most this;
- floors: per-metric minimums on the final artifact (e.g. accuracy=95, cosine_min=0.99).
"""
from __future__ import annotations

from typing import Any

from compressor.errors import UsageError

KNOWN_METRICS = ("accuracy", "agreement", "cosine_min", "cosine_mean")


def parse_floors(items: list[str]) -> dict[str, float]:
    floors = {}
    for item in items:
        name, eq, value = item.partition("=")
        try:
            if not eq or not name.strip():
                raise ValueError
            floors[name.strip()] = float(value)
        except ValueError:
            raise UsageError(f"--floor {item!r}: expected metric=value (e.g. accuracy=95 or cosine_min=0.99)")
    return floors


def evaluate_gates(baseline: float, final: float, final_extra: dict[str, float], metric: str, onnx_size: int,
                   max_drop: float, min_recovery: float | None, max_bytes: int | None,
                   floors: dict[str, float]) -> list[dict[str, Any]]:
    gates = [{"name": "max_drop", "value": round(baseline - final, 6), "limit": max_drop,
              "passed": baseline - final <= max_drop + 1e-9}]
    if min_recovery is not None:
        ratio = final / baseline if baseline else 0.0
        gates.append({"name": "min_recovery", "value": round(ratio, 6), "limit": min_recovery,
                      "passed": ratio >= min_recovery - 1e-12})
    if max_bytes is not None:
        gates.append({"name": "max_bytes", "value": onnx_size, "limit": max_bytes, "passed": onnx_size <= max_bytes})
    values = {metric: final, **final_extra}
    for name, floor in floors.items():
        if name not in values:
            raise UsageError(f"--floor {name}: this run measures {', '.join(sorted(values))}, not {name}")
        gates.append({"name": f"floor:{name}", "value": values[name], "limit": floor,
                      "passed": values[name] >= floor - 1e-12})
    return gates
