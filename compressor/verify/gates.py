"""CI gates: each failed gate is named in the report and makes the exit code 3.

- max_drop: the final artifact's metric may be at most this much worse than the baseline's (points for accuracy,
  agreement and cosine = 100 x mean cosine; a rise of mse, in its own units), direction from judge/budget.py;
- min_recovery: final / baseline metric at least this ratio (the recovery check llm-compressor's CI uses); for a
  lower-is-better metric baseline / final;
- max_bytes: the ONNX artifact's size (smallest of raw and gzip bytes) at most this;
- floors: per-metric minimums on the final artifact (e.g. accuracy=95, cosine_min=0.99); for mse (and a plugin
  marked `lower_is_better`) the value is a ceiling.
"""
from __future__ import annotations

from typing import Any

from compressor.errors import UsageError
from compressor.judge.budget import drop, value_within

KNOWN_METRICS = ("accuracy", "agreement", "cosine", "cosine_min", "cosine_mean", "mse")
LOWER_IS_BETTER = {"mse"}


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
                   floors: dict[str, float], higher_is_better: bool = True,
                   lower_names: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    gates = [{"name": "max_drop", "value": round(drop(baseline, final, higher_is_better), 6), "limit": max_drop,
              "passed": value_within(baseline, final, max_drop, higher_is_better)}]
    if min_recovery is not None:
        num, den = (final, baseline) if higher_is_better else (baseline, final)
        ratio = num / den if den else (1.0 if num == den else 0.0)
        gates.append({"name": "min_recovery", "value": round(ratio, 6), "limit": min_recovery,
                      "passed": ratio >= min_recovery - 1e-12})
    if max_bytes is not None:
        gates.append({"name": "max_bytes", "value": onnx_size, "limit": max_bytes, "passed": onnx_size <= max_bytes})
    values = {**final_extra, metric: final}
    for name, floor in floors.items():
        if name not in values:
            raise UsageError(f"--floor {name}: this run measures {', '.join(sorted(values))}, not {name}")
        ceiling = name in LOWER_IS_BETTER or name in lower_names or (name == metric and not higher_is_better)
        gates.append({"name": f"floor:{name}", "value": values[name], "limit": floor,
                      "passed": values[name] <= floor + 1e-12 if ceiling else values[name] >= floor - 1e-12})
    return gates
