"""When 0/1 validation scores cannot see a cost: also bound the drop of the probability of the right class.

The budget rule (`judge/budget.py`) bounds the paired drop of per-sample 0/1 correctness. It sees a cost only
through discordant pairs: samples the original gets right and the candidate wrong. When the validation set is
saturated -- the original is right on all of it, as on a split of the data it was trained on, or always
for `agreement`, where the original agrees with itself on every sample -- pruning moves the samples towards the
decision boundary without flipping any, the bound stays at 0 and the stop rule goes on while fresh data (the
held-out gate) already loses points. Hooker et al., "What Do Compressed Deep Neural Networks Forget?" (arXiv
1911.05248, 2019): compression costs low-margin examples first, and aggregate top-1 accuracy hides it until they
flip.

So every decision on a 0/1 metric also judges a continuous score that moves before a prediction flips: the
candidate's softmax probability of the true class (accuracy) or of the original's predicted class (agreement),
per sample, paired with the original's own:

    p_i = softmax(z_i)[y_i]            d_i = 100 (p_i(original) - p_i(candidate))

the same paired upper confidence bound, against the same budget. p_i is the expected 0/1 correctness of the
classifier that draws its prediction from its own softmax, so 100 x mean(p) is an accuracy in points (equal to
top-1 accuracy for confident predictions, and to it in expectation for a calibrated model: Guo et al., "On
Calibration of Modern Neural Networks", ICML 2017): the budget means the same on both scales. Temperature 1, the
model's own predictive distribution, no tuned constant. A candidate is accepted only if BOTH bounds are within
the budget, so the rule is never looser than the 0/1 rule alone. The decision says which bound decided (the
larger one).

The candidate's probability is read as it is, not at a logit scale fitted to the original's softmax (which would
discount shrinkage's decay of the logits, a change that moves no prediction): on a memorised split the unmatched
probability is the only brake on a ResNet (what a fitted scale did: docs/ALGORITHMS.md §2).

Only on a saturated set (the original right on every validation sample), where 0/1 correctness certainly cannot
discriminate. Where the original errs on some validation samples the set reaches the decision boundary and the
0/1 bound alone decides: p is a proxy that also falls when a candidate is merely less confident, and applied there
too it stops prune early (docs/ALGORITHMS.md §2).
"""
from __future__ import annotations

from dataclasses import replace

import torch

from compressor.judge.budget import BudgetDecision, within_budget
from compressor.judge.kind import probabilities

PROBABILITY_RULES = {"accuracy": "true-class probability", "agreement": "probability of the original's class"}


def class_probability_scores(outputs: torch.Tensor, labels: torch.Tensor | None, reference: torch.Tensor | None,
                             metric: str) -> torch.Tensor | None:
    """Per-sample softmax probability of the right class: the label (accuracy, [N, C] outputs) or the reference
    (original) output's argmax over the last axis, averaged over positions for per-token outputs (agreement).
    None for metrics that are already continuous (cosine, mse) or have no per-sample form (plugins)."""
    # a model whose output already is class probabilities (a softmax head) is read as it is: a softmax of
    # probabilities would squash every row towards uniform and the bound could never exceed a fraction of a point
    ready = probabilities(outputs) == "softmax" and (reference is None or probabilities(reference) == "softmax")
    if metric == "accuracy" and labels is not None:
        flat = outputs.reshape(outputs.shape[0], -1).double()
        return (flat if ready else torch.softmax(flat, dim=1)).gather(1, labels.reshape(-1, 1).long())[:, 0]
    if metric == "agreement" and reference is not None:
        prob = outputs.double() if ready else torch.softmax(outputs.double(), dim=-1)
        picked = prob.gather(-1, reference.argmax(-1, keepdim=True))[..., 0]
        return picked.reshape(picked.shape[0], -1).mean(1)
    return None


def saturated(baseline_scores: torch.Tensor) -> bool:
    """The original is right on every validation sample: the 0/1 scores can only show losses, never margins."""
    return bool((torch.as_tensor(baseline_scores) >= 1).all())


def saturation_note(baseline_scores: torch.Tensor, metric: str) -> str:
    """The report's line on which rule decides, and why."""
    n = int(torch.as_tensor(baseline_scores).numel())
    if saturated(baseline_scores):
        return (f"validation saturated: the original is right on all {n} validation samples, so 0/1 {metric} sees "
                "no cost before a prediction flips; every budget decision (shrink's result, prune's steps and codebook, "
                f"rpg's ring, basis's size) also bounds the drop of the {PROBABILITY_RULES[metric]} (judge/saturation.py)"
                + ("; under agreement the original is right on every sample by definition, so always"
                   if metric == "agreement" else ""))
    wrong = int((torch.as_tensor(baseline_scores) < 1).sum())
    return (f"validation not saturated (the original is wrong on {wrong} of {n} validation samples): stage decisions "
            f"bound the 0/1 {metric} drop")


def within_budget_both(base_hard: torch.Tensor, cand_hard: torch.Tensor, base_prob: torch.Tensor,
                       cand_prob: torch.Tensor, budget: float, confidence: float, metric: str) -> BudgetDecision:
    """Accept only if the paired bounds on both the 0/1 drop and the class-probability drop are within `budget`;
    the returned decision is the one with the larger bound (the one that decided), naming the other."""
    hard = within_budget(base_hard, cand_hard, budget, confidence)
    soft = within_budget(base_prob, cand_prob, budget, confidence)
    name = PROBABILITY_RULES.get(metric, "class probability")
    accepted = hard.accepted and soft.accepted
    if soft.bound > hard.bound:
        return replace(soft, accepted=accepted, rule=name,
                       other=f"0/1 {metric} bound {hard.bound:.2f}")
    return replace(hard, accepted=accepted, rule=f"0/1 {metric}", other=f"{name} bound {soft.bound:.2f}")
