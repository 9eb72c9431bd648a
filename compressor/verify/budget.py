"""The one place that knows which way a metric goes: how much a candidate is worse than the baseline, whether it
is within a budget, whether one result beats another.

Accuracy, agreement and cosine (points of 100 x mean cosine) are higher-is-better; MSE to the original's outputs
is lower-is-better. Every stop rule, selection and gate calls these instead of writing `baseline - value`.
"""
from __future__ import annotations


def drop(baseline: float, candidate: float, higher_is_better: bool = True) -> float:
    """How much worse `candidate` is than `baseline`, in the metric's own units (positive = worse)."""
    return baseline - candidate if higher_is_better else candidate - baseline


def tolerance(max_drop: float, n_val: int | None = None) -> float:
    """The allowed drop. For a metric counted in whole samples (accuracy, agreement: pass `n_val`, the validation
    size) a drop smaller than two samples (200 / n_val points) cannot be told from noise, so the tolerance never
    goes below it; continuous metrics (`n_val=None`) use `max_drop` as is."""
    return max(max_drop, 200.0 / n_val) if n_val else max_drop


def within_budget(baseline: float, candidate: float, max_drop: float, n_val: int | None = None,
                  higher_is_better: bool = True) -> bool:
    """Whether `candidate` is at most `tolerance(max_drop, n_val)` worse than `baseline`."""
    return drop(baseline, candidate, higher_is_better) <= tolerance(max_drop, n_val) + 1e-9


def is_better(candidate: float, best: float, higher_is_better: bool = True, ties: bool = False) -> bool:
    """Whether `candidate` beats `best` (`ties=True`: an equal value counts as better)."""
    d = drop(best, candidate, higher_is_better)
    return d <= 0 if ties else d < 0
