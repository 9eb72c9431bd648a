"""The one rule every stage decision uses: is a candidate within the run's drop budget on validation data?

A validation set of a few hundred samples measures a drop only to about one sample (digits: 180 validation
images, 0.56 points each), so "the observed drop is at most max_drop" passes candidates whose true drop is well
above the budget about half of the time, and the held-out gate then fails. The rule here is a one-sided upper
confidence bound on the *paired* drop: the same validation samples are judged before (baseline) and after
(candidate), d_i = 100 (b_i - c_i) with per-sample scores in [0, 1] (higher is better: correctness 0/1 for
accuracy and agreement, cosine similarity for embeddings), and

    bound = mean(d) + z_conf * sd(d) / sqrt(n)          (paired z-bound; for 0/1 scores the variance is
                                                         McNemar's: (n10 + n01)/n - ((n10 - n01)/n)^2)

A candidate is accepted only if bound <= budget. When baseline and candidate agree on every sample the bound is
the observed drop; every disagreement widens it, so a small validation set makes the rule stricter, never
looser (the old rule widened max_drop to two validation samples; that is gone).

Direction: accuracy, agreement and cosine (points of 100 x mean cosine) are higher-is-better; MSE to the original's
outputs is lower-is-better. `sample_scores` turns every built-in metric into per-sample scores where higher is
better and 100 x the mean difference is the drop in the metric's own units (MSE: score = -mse_i / 100), so one
rule serves them all; `drop`, `value_within` and `is_better` compare whole-set values (gates, selections, plugin
metrics, which have no per-sample form).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import torch

from compressor.defaults import DEFAULT_CONFIDENCE


@dataclass(frozen=True)
class BudgetDecision:
    accepted: bool
    drop: float          # observed mean drop in points
    bound: float         # one-sided upper confidence bound on the drop, in points
    budget: float
    confidence: float
    n: int
    rule: str = ""       # which per-sample score decided (judge/saturation.py), "" = the metric's own
    other: str = ""      # the other score's bound, when two were judged

    def describe(self) -> str:
        verdict = "within" if self.accepted else "over"
        rule = f"; decided by the {self.rule}" if self.rule else ""
        other = f", {self.other}" if self.other else ""
        return (f"drop {self.drop:.2f} points, {self.confidence:.0%} upper bound {self.bound:.2f} {verdict} "
                f"budget {self.budget:.2f} (paired bound on {self.n} validation samples{rule}{other})")


def drop_bound(baseline_scores: torch.Tensor, candidate_scores: torch.Tensor,
               confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """(observed drop, upper confidence bound), both in points, from paired per-sample scores in [0, 1]."""
    b = torch.as_tensor(baseline_scores, dtype=torch.float64).reshape(-1)
    c = torch.as_tensor(candidate_scores, dtype=torch.float64).reshape(-1)
    if b.shape != c.shape or b.numel() == 0:
        raise ValueError(f"paired scores must have the same non-zero length ({b.numel()} vs {c.numel()})")
    d = (b - c) * 100.0
    n = d.numel()
    mean = float(d.mean())
    var = float(((d - mean) ** 2).sum()) / max(n - 1, 1)
    z = NormalDist().inv_cdf(confidence)
    return mean, mean + z * math.sqrt(var / n)


def within_budget(baseline_scores: torch.Tensor, candidate_scores: torch.Tensor, budget: float,
                  confidence: float = DEFAULT_CONFIDENCE) -> BudgetDecision:
    """Accept a candidate only if the upper confidence bound on its paired drop is within `budget` points."""
    drop, bound = drop_bound(baseline_scores, candidate_scores, confidence)
    return BudgetDecision(accepted=bound <= budget + 1e-9, drop=drop, bound=bound, budget=budget,
                          confidence=confidence, n=int(torch.as_tensor(baseline_scores).numel()))


def sample_scores(outputs: torch.Tensor, labels: torch.Tensor | None, reference: torch.Tensor | None,
                  metric: str | None = None) -> torch.Tensor | None:
    """Per-sample scores of the primary metric, higher is better (the shape `within_budget` takes): correctness
    against labels (accuracy); agreement of the predicted class with the reference (original) outputs, averaged
    over positions for per-token outputs (agreement); cosine similarity to the reference, clamped at 0 (cosine);
    minus the per-sample squared error / 100 (mse). `metric=None` picks as the metric detection does for the
    common cases. None for a plugin metric (no per-sample form: compare values with `value_within`)."""
    flat = outputs.reshape(outputs.shape[0], -1)
    if metric is None:
        metric = "accuracy" if labels is not None and outputs.ndim == 2 else (
            "agreement" if outputs.ndim == 2 and flat.shape[1] > 1 else "cosine")
    if metric == "accuracy":
        return (flat.argmax(1) == labels.reshape(-1)).double()
    if metric not in ("agreement", "cosine", "mse"):
        return None
    if reference is None:
        return torch.ones(flat.shape[0], dtype=torch.float64)
    ref = reference.reshape(reference.shape[0], -1)
    if metric == "agreement":
        same = (outputs.argmax(-1) == reference.argmax(-1)).double()
        return same.reshape(same.shape[0], -1).mean(1)
    if metric == "mse":
        return -((flat.double() - ref.double()) ** 2).mean(1) / 100.0
    cos = torch.nn.functional.cosine_similarity(flat.double(), ref.double(), dim=1, eps=1e-12)
    return cos.clamp(min=0.0)


def drop(baseline: float, candidate: float, higher_is_better: bool = True) -> float:
    """How much worse `candidate` is than `baseline`, in the metric's own units (positive = worse)."""
    return baseline - candidate if higher_is_better else candidate - baseline


def value_within(baseline: float, candidate: float, max_drop: float, higher_is_better: bool = True) -> bool:
    """Whether the whole-set value `candidate` is at most `max_drop` worse than `baseline` (the CI gate's rule)."""
    return drop(baseline, candidate, higher_is_better) <= max_drop + 1e-9


def is_better(candidate: float, best: float, higher_is_better: bool = True, ties: bool = False) -> bool:
    """Whether `candidate` beats `best` (`ties=True`: an equal value counts as better)."""
    d = drop(best, candidate, higher_is_better)
    return d <= 0 if ties else d < 0
