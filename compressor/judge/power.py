"""What a validation set can show: its resolution against each stage's budget, and signs it is not fresh.

Every stage decision is the paired upper confidence bound of `judge/budget.py` on validation. For a metric that
counts samples, one validation sample that the candidate gets wrong and the original got right (and nothing else
changed) has drop 100/n and a bound of exactly 100 (1 + z) / n points at a look's confidence (z = 0.674 at 75%: 0.93
points on 180 samples; prune's default 93.75% per look: 0.56 on 450).
A stage whose share of --max-drop is below that keeps nothing that loses a validation sample net, however little
the loss would cost on fresh data (prune's half share of a 1-point gate is 0.50: on 180 samples it stops at the
first step that loses one; docs/ALGORITHMS.md §2). The run says so and says
how many samples would admit one loss, instead of leaving the user to guess why a stage stopped early.

A validation set that picked the original (early stopping on it) or that it was trained on flatters the original:
every compressed candidate then looks worse on validation than it is (an example in docs/metrics.md). The report
warns when the original's validation score is above its held-out score by more than chance easily explains
(one-sided Fisher exact p < 0.10). That compares
figures the report shows anyway; no decision reads held-out.
"""
from __future__ import annotations

import math
from statistics import NormalDist


def one_loss_bound(n: int, confidence: float) -> float:
    """The decision rule's bound, in points, when exactly one of n 0/1 validation samples is lost: d_i is 100 once
    and 0 n - 1 times, so mean = 100/n and the sample variance is 100^2/n, and the bound is exactly 100 (1 + z)/n."""
    return 100.0 * (1 + NormalDist().inv_cdf(confidence)) / n


def samples_to_lose_one(budget: float, confidence: float) -> int | None:
    """The fewest validation samples on which one lost sample is within `budget` points (None: no budget)."""
    if budget <= 0:
        return None
    return max(2, math.ceil(one_loss_bound(1, confidence) / budget - 1e-9))  # the bound is one_loss_bound(1) / n


def resolution_note(shares: dict[str, float], n: int, confidences: dict[str, float], max_drop: float) -> str | None:
    """A warning naming the stages whose budget share is below one validation sample's bound at the confidence of
    each of their looks (`confidences`: stage -> per-look confidence, judge/looks.py; None: none is)."""
    if n < 2:
        return None
    bounds = {name: one_loss_bound(n, confidences[name]) for name in shares}
    low = {name: share for name, share in shares.items() if 0 < share and share + 1e-9 < bounds[name]}
    if not low:  # a share of 0: no loss wanted
        return None
    name = min(low, key=low.get)
    need = samples_to_lose_one(low[name], confidences[name])
    names = ", ".join(f"{k} {s:.2f} (one lost sample bounds at {bounds[k]:.2f} at its {confidences[k]:.2%} per look)"
                      for k, s in low.items())
    more = f"About {need:,} validation samples" if need else "Many more validation samples"
    return (f"WARNING: on {n} validation samples one lost sample is over the budget share of {names} "
            f"(of --max-drop {max_drop:g}; judge/looks.py): such a stage keeps only candidates that "
            "lose no validation sample net (prune and rpg may stop early, shrink may keep its input, quantize may keep "
            f"a safer form or the float graph). {more} (--val-data), or a larger --max-drop or <stage>.max_drop, "
            "would admit one lost sample")


def exact_gap_p(k_val: int, n_val: int, k_held: int, n_held: int) -> float:
    """One-sided Fisher exact p-value that validation is at least this much better than held-out by chance alone:
    P(X >= k_val) for X hypergeometric (n_val draws from n_val + n_held samples of which k_val + k_held are right).
    Exact, so a validation set the original gets entirely right is not over-read (a normal test with per-set
    variances treats 180/180 as noise-free)."""
    total, right = n_val + n_held, k_val + k_held
    log_all = math.lgamma(total + 1) - math.lgamma(n_val + 1) - math.lgamma(n_held + 1)

    def log_term(x: int) -> float:
        return (math.lgamma(right + 1) - math.lgamma(x + 1) - math.lgamma(right - x + 1)
                + math.lgamma(total - right + 1) - math.lgamma(n_val - x + 1)
                - math.lgamma(total - right - n_val + x + 1) - log_all)

    top = min(n_val, right)
    return min(1.0, sum(math.exp(log_term(x)) for x in range(k_val, top + 1) if n_val - x <= total - right))


def selection_gap_note(val_value: float, n_val: int, held_value: float, n_held: int, independent: bool,
                       alpha: float = 0.10) -> str | None:
    """A warning when the original's validation accuracy is above its held-out accuracy by more than chance easily
    explains (one-sided Fisher exact test, p < `alpha`: a warning's threshold, not a decision's); `independent`:
    validation came from --val-data, not a split of the training data (then any gap over half a point)."""
    gap = val_value - held_value
    if not independent:
        if gap <= 0.5:
            return None
        return (f"WARNING: the original model scores {val_value:.2f} on the validation split of the training data vs "
                f"{held_value:.2f} held out: it has likely seen those samples, so stage decisions cannot see what "
                "compression costs; pass an independent --val-data")
    if gap <= 0 or n_val < 1 or n_held < 1:
        return None
    p = exact_gap_p(round(val_value * n_val / 100), n_val, round(held_value * n_held / 100), n_held)
    if p >= alpha:
        return None
    return (f"WARNING: the original model scores {val_value:.2f} on --val-data vs {held_value:.2f} held out, more "
            f"than chance easily explains (one-sided exact p = {p:.3f}): if that validation set chose the original "
            "(early stopping, model selection) or was trained on, it flatters the original and every stage "
            "decision on it is pessimistic; a validation set the original never saw decides better")
