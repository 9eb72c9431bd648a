"""The decision on one candidate model, and a stage's share of the run's budget.

Every stage decision goes through `judge_model`: the candidate's outputs on validation data, scored per sample in the
run's metric, against the original's, with the paired upper confidence bound of `budget.py` (and, on a saturated
validation set, the class-probability bound of `saturation.py` too). `stage_budget` is how much of --max-drop one
stage may spend. The run's context offers both to stages (`StageContext.judge`, `StageContext.stage_budget`).
"""
from __future__ import annotations

import torch
from torch import nn

from compressor.io.data import Dataset
from compressor.judge.budget import (
    BudgetDecision,
    drop,
    sample_scores,
    value_within,
    within_budget,
)
from compressor.judge.kind import MetricChoice
from compressor.judge.metrics import Metrics, score
from compressor.judge.saturation import (
    class_probability_scores,
    saturated,
    within_budget_both,
)
from compressor.runtime.calls import predict


def stage_budget(plan: list[str], stage: str, own: float | None, max_drop: float) -> float:
    """A stage's share of the run's budget: its own max_drop if set (never above --max-drop), else half of
    --max-drop when a later stage of the plan also spends points (int8 quantize on top of a pruned model, and
    the gate's own held-out noise: a 75% bound passes a borderline candidate one time in four), else all."""
    if own is not None:
        return min(own, max_drop)
    names = [p.strip() for p in plan if p.strip()]
    later = names[names.index(stage) + 1:] if stage in names else []
    return max_drop / 2 if later else max_drop


def judge_model(model: nn.Module, val: Dataset, val_reference: torch.Tensor, baseline_val: Metrics,
                metric: MetricChoice, device: torch.device, budget: float, confidence: float) -> BudgetDecision:
    """Is `model` within `budget` on validation, in the run's metric? The paired upper confidence bound of
    `budget.py`, the same for every decision (a plugin metric without per-sample scores: its observed value against
    the budget)."""
    return judge_outputs(predict(model, val, device), val, val_reference, baseline_val, metric, budget, confidence)


def judge_outputs(out: torch.Tensor, val: Dataset, val_reference: torch.Tensor, baseline_val: Metrics,
                  metric: MetricChoice, budget: float, confidence: float) -> BudgetDecision:
    """`judge_model` on outputs already computed (a quantized graph's, run in ONNX Runtime)."""
    name, labels = metric.name, val.labels
    base = sample_scores(val_reference, labels, val_reference, name)
    if base is None:
        value = score(out, val, val_reference, metric).value
        d = drop(baseline_val.value, value, metric.higher_is_better)
        return BudgetDecision(accepted=value_within(baseline_val.value, value, budget, metric.higher_is_better),
                              drop=d, bound=d, budget=budget, confidence=confidence, n=len(val))
    if not bool(torch.isfinite(out).all()):  # NaN/inf outputs: no score of them means anything
        return BudgetDecision(accepted=False, drop=float("inf"), bound=float("inf"), budget=budget,
                              confidence=confidence, n=len(val), rule="finite outputs",
                              other="the model gives NaN or inf on validation")
    cand = sample_scores(out, labels, val_reference, name)
    base_p = class_probability_scores(val_reference, labels, val_reference, name)
    if base_p is None or not saturated(base) or not bool(torch.isfinite(base_p).all()):
        return within_budget(base, cand, budget, confidence)
    # a saturated validation set hides from 0/1 scores what fresh data loses: bound the class probability too
    return within_budget_both(base, cand, base_p, class_probability_scores(out, labels, val_reference, name),
                              budget, confidence, name)
