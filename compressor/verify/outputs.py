"""Every output verified: a model that returns several tensors (a detector's boxes beside its class scores, an
encoder's pooled and token outputs) has each one of model.onnx's outputs measured on held-out against the original's,
not only the main one that drives the stage decisions.

Each secondary output gets its own metric, detected from the original's outputs without labels (judge/kind.py:
class scores -> agreement, a single column -> mse, anything else -> cosine) or named with
`--output-metric NAME=KIND` (NAME as `other_outputs_notes` and the report print it: `boxes`, `extra.0`, `1`). Its
drop is the paired drop of judge/budget.py's per-sample scores (points of agreement or 100 x cosine; the rise of
mse), gated by --max-drop. An output that is not one value per sample (a scalar per call) is listed, not compared.
"""
from __future__ import annotations

from typing import Any

import torch

from compressor.errors import UsageError
from compressor.io.data import Dataset
from compressor.judge.budget import sample_scores
from compressor.judge.kind import choose
from compressor.runtime.calls import predict_outputs

OUTPUT_KINDS = ("agreement", "cosine", "mse")


def parse_output_metrics(items: list[str] | dict[str, str] | None) -> dict[str, str]:
    """`NAME=KIND` items (or a recipe's mapping) as {name: kind}, each kind one of OUTPUT_KINDS."""
    pairs = items.items() if isinstance(items, dict) else (i.partition("=")[::2] for i in items or [])
    out = {}
    for name, kind in pairs:
        name, kind = str(name).strip(), str(kind).strip()
        if not name or kind not in OUTPUT_KINDS:
            raise UsageError(f"--output-metric {name}={kind}: expected OUTPUT=KIND with KIND one of "
                             f"{', '.join(OUTPUT_KINDS)}")
        out[name] = kind
    return out


def check_output_names(requested: dict[str, str], names: list[str]) -> None:
    """A requested output must exist among the secondary outputs (the main one takes --metric KIND)."""
    for name in requested:
        if name not in names[1:]:
            others = ", ".join(names[1:]) or "none"
            raise UsageError(f"--output-metric {name}=...: the model's other outputs are {others} "
                             f"({names[0] if names else 'its output'} is the main one: --metric KIND sets its metric)")


def verify_outputs(original: torch.nn.Module, ours: list[torch.Tensor], heldout: Dataset, device: torch.device,
                   requested: dict[str, str], max_drop: float) -> list[dict[str, Any]]:
    """One record per secondary output of model.onnx (`ours`: its outputs after the main one on held-out, from the
    run's one ONNX Runtime pass; none for a one-output model): its metric, why, the paired drop against the
    original's output on held-out, and whether it is within --max-drop."""
    if not ours:
        return []
    named = predict_outputs(original, heldout, device)[1:]
    if len(named) != len(ours):
        return [{"output": "*", "passed": False, "drop": None, "limit": max_drop,
                 "reason": f"model.onnx has {len(ours)} other outputs, the original {len(named)}"}]
    records = []
    for (name, ref), out in zip(named, ours):
        if ref.ndim == 0 or ref.shape[0] != len(heldout) or out.numel() != ref.numel():
            records.append({"output": name, "metric": None, "drop": None, "limit": max_drop, "passed": True,
                            "reason": f"not one value per sample (shape {tuple(ref.shape)}): not comparable by sample"})
            continue
        choice = choose(ref, None, requested.get(name))
        base = sample_scores(ref, None, ref, choice.name)
        cand = sample_scores(out.reshape(ref.shape), None, ref, choice.name)
        drop = float((base - cand).mean()) * 100.0
        reason = f"--output-metric {name}={choice.name}" if name in requested else choice.reason
        records.append({"output": name, "metric": choice.name, "reason": reason, "drop": drop,
                        "max_abs_diff": float((out.reshape(ref.shape) - ref).abs().max()) if ref.numel() else 0.0,
                        "limit": max_drop, "passed": drop <= max_drop + 1e-9})
    return records
