"""How confident each look must be so that a whole search keeps an over-budget candidate at most 1 - confidence
of the time.

The budget rule (`budget.py`) is a one-sided upper confidence bound on one candidate's paired validation drop: a
candidate whose true drop is above the budget passes one look with probability at most alpha = 1 - confidence.
A search looks many times at the same validation set, and every look at an over-budget candidate is another chance
to pass one, so the per-look alpha does not hold for the search (the multiple-comparisons problem). The accounting
here spends the run's one alpha over the looks that can keep an over-budget candidate; `per_look_confidence` is
what each of them must then use.

In-place searches of rising compression (prune's steps): with true drops that rise with compression, the
hypotheses "step k is over budget" are tested in a fixed order and the search keeps the last step before the first
failure. That is the fixed-sequence procedure (Maurer, Hothorn and Lehmacher 1995; Westfall and Krishen 2001,
"Optimally weighted, fixed sequence and gatekeeper multiple testing procedures", J. Stat. Plan. Inference 99):
every test at the full alpha, no correction, because only the first over-budget step can be kept wrongly and it
is tested once. Every extra chance after a failure breaks that: a patience round (another fine-tune of the same
step, judged again) and a lookahead step (pruned past a rejection, all further steps over budget too). Before the
first over-budget step is accepted, at most (tries per step) x (1 + lookahead) looks fall on over-budget states,
so alpha / that many per look bounds the whole search by alpha (Bonferroni's union bound: Dunn 1961, "Multiple
comparisons among means", JASA 56). A calibrated step (wanda, sparsegpt) judged once before its fine-tunes is one
more try of that step.

Searches that try sizes from most compressed down and keep the first that passes (rpg's ring, basis's K): every
planned candidate may be over budget and each is judged once, so alpha / K per look (Bonferroni over the K planned
candidates). Trying sizes from least compressed up and keeping the last that passes would be a fixed sequence
needing no correction, at the cost of fitting more candidates.

A fine-tune that keeps its best epoch by the validation score and is then judged on the same validation set picks
the epoch whose noise flatters it (selection bias: Cawley and Talbot 2010, "On over-fitting in model selection and
subsequent selection bias in performance evaluation", JMLR 11): every epoch it chose among is a hidden look. It
selects on a slice that does not judge it; then the judgement is one look.

Bonferroni holds under any dependence between the looks, and is nearly tight when every over-budget look is just
over the budget with errors drawn afresh; when later candidates are well over it, or looks share most of their
errors, it is conservative. It assumes the true drop does not fall as compression rises, and it is only as good as
each look's bound: budget.py's z-bound is a normal approximation that passes an at-budget candidate more often than
alpha when few validation samples disagree (tests/test_rule_simulation.py measures both).
"""
from __future__ import annotations


def per_look_confidence(confidence: float, chances: int) -> float:
    """The confidence of each look when at most `chances` looks can keep an over-budget candidate: alpha / chances
    per look, alpha = 1 - confidence (Bonferroni), so the search keeps one with probability at most alpha."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    if int(chances) != chances or chances < 1:
        raise ValueError(f"chances must be a whole number >= 1, not {chances}")
    return 1.0 - (1.0 - confidence) / int(chances)


def prune_chances(patience: int, lookahead: int, calibrated: bool = False, tuned: bool = True) -> int:
    """Looks prune's steps can spend on over-budget states before it stops: (tries per step) x (1 + lookahead), a
    try being each of the 1 + patience judged fine-tune rounds (`tuned`: epochs_per_step > 0), plus one for a
    calibrated step judged before its fine-tunes; an untuned step is judged once."""
    if patience < 0 or lookahead < 0:
        raise ValueError(f"patience and lookahead must be >= 0, not {patience} and {lookahead}")
    tries = 1 + patience + int(calibrated) if tuned else 1
    return tries * (1 + lookahead)


def growth_chances(n_candidates: int) -> int:
    """Looks of a search that keeps the first of `n_candidates` planned sizes within budget (most compressed
    first): each planned candidate is one (Bonferroni over the plan)."""
    if n_candidates < 1:
        raise ValueError(f"a search plans at least one candidate, not {n_candidates}")
    return int(n_candidates)
