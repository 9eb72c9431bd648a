"""What a validation set can show: its resolution against each stage's budget, and signs it is not fresh.

Every stage decision is the paired upper confidence bound of `verify/budget.py` on validation. For a metric that
counts samples, one validation sample that the candidate gets wrong and the original got right (and nothing else
changed) has drop 100/n and a bound of exactly 100 (1 + z) / n points (z = 0.674 at 75%): 0.93 points on 180 samples.
A stage whose share of --max-drop is below that keeps nothing that loses a validation sample net, however little
the loss would cost on fresh data (digits, issue 11: prune's half share of a 1-point gate is 0.50, so digits_mlp
and digits_cnn stop at the first step that loses one of the 180 samples, 72-85% sparse). The run says so and says
how many samples would admit one loss, instead of leaving the user to guess why a stage stopped early.

A validation set that picked the original (early stopping on it) or that it was trained on flatters the original:
every compressed candidate then looks worse on validation than it is (digits_mlp: 99.44 on digits_val, which chose
its epoch, against 96.94 held out). The report warns when the original's validation score is significantly above
its held-out score. That compares figures the report shows anyway; no decision reads held-out.
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
    return max(2, math.ceil(100.0 * (1 + NormalDist().inv_cdf(confidence)) / budget - 1e-9))


def resolution_note(shares: dict[str, float], n: int, confidence: float, max_drop: float) -> str | None:
    """A warning naming the stages whose budget share is below one validation sample's bound (None: none is)."""
    if n < 2:
        return None
    one = one_loss_bound(n, confidence)
    low = {name: share for name, share in shares.items() if share + 1e-9 < one}
    if not low:
        return None
    share = min(low.values())
    need = samples_to_lose_one(share, confidence)
    names = ", ".join(f"{name} {s:.2f}" for name, s in low.items())
    more = f"About {need:,} validation samples" if need else "Many more validation samples"
    return (f"WARNING: on {n} validation samples one lost sample has a {confidence:.0%} bound of {one:.2f} points, "
            f"above the budget share of {names} (of --max-drop {max_drop:g}): such a stage keeps only candidates that "
            f"lose no validation sample net, and may stop well before its target. {more} (--val-data), or a larger "
            "--max-drop or <stage>.max_drop, would admit one lost sample")


def selection_gap_note(val_value: float, n_val: int, held_value: float, n_held: int, independent: bool,
                       confidence: float = 0.95) -> str | None:
    """A warning when the original's validation accuracy is above its held-out accuracy by more than chance allows
    (one-sided two-proportion z test at `confidence`); `independent`: validation came from --val-data, not a
    split of the training data."""
    gap = val_value - held_value
    p_val, p_held = val_value / 100, held_value / 100
    se = 100 * math.sqrt(max(p_val * (1 - p_val), 1e-12) / max(n_val, 1) + max(p_held * (1 - p_held), 1e-12)
                         / max(n_held, 1))
    if not independent:
        if gap <= 0.5:
            return None
        return (f"WARNING: the original model scores {val_value:.2f} on the validation split of the training data vs "
                f"{held_value:.2f} held out: it has likely seen those samples, so stage decisions cannot see what "
                "compression costs; pass an independent --val-data")
    if gap <= NormalDist().inv_cdf(confidence) * se:
        return None
    return (f"WARNING: the original model scores {val_value:.2f} on --val-data vs {held_value:.2f} held out, more "
            f"than chance allows ({gap / se:.1f} standard errors): if that validation set chose the original "
            "(early stopping, model selection) or was trained on, it flatters the original and every stage "
            "decision on it is pessimistic; a validation set the original never saw decides better")
