"""basis: how many functions each stack keeps, chosen on validation with the run's budget rule.

Queiruga et al. (Stateful ODE-Nets, docs/ALGORITHMS.md §4) change the basis without retraining, which holds for
blocks trained smooth in depth (refinement training). A pretrained ResNet stage or transformer is not smooth
(docs/ALGORITHMS.md §4), so a fixed K = half the depth can spend any amount of the user's budget. The stage judges each
size with the run's one rule (`RunContext.judge`: a one-sided upper confidence bound on the paired validation drop,
within basis's share of --max-drop) and, while over, grows every stack's K geometrically (basis.grow_factor g):

    K_0 from basis.size,   K_{i+1} = max(ceil(g K_i), K_i + 1)   (the next valid size of the basis)

A stack whose next K reaches its depth D is left as its original blocks: K = D stores as many coefficient sets as
blocks, so it saves nothing. When every stack is there, the stage returns its input model unchanged and says so.
Each size re-projects the stage's input (a fresh copy) with the same seeded fine-tuning, so the search is
reproducible from --seed; held-out data never enters it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from compressor.judge.looks import per_look_confidence
from compressor.judge.budget import BudgetDecision


def next_size(kind: str, k: int, depth: int, factor: float) -> int | None:
    """The next K after `k` for a stack of `depth` blocks, or None when it reaches the depth (stack left as is)."""
    nxt = max(math.ceil(factor * k), k + 1)
    if kind == "discontinuous_linear" and nxt % 2:  # its functions come in pairs
        nxt += 1
    return nxt if nxt < depth else None


def size_schedule(kind: str, starts: list[int], depths: list[int], grow: bool, factor: float
                  ) -> list[list[int | None]]:
    """The per-stack sizes to try, in order: the configured sizes, then each grown by `next_size` until every stack
    is left as it was (None). The configured K is always tried, even K = depth (an explicit, exact projection)."""
    levels: list[list[int | None]] = [list(starts)]
    while grow and any(k is not None for k in levels[-1]):
        levels.append([None if k is None else next_size(kind, k, d, factor) for k, d in zip(levels[-1], depths)])
    return levels


@dataclass
class SizeFit:
    """One set of per-stack sizes, projected (and fine-tuned if asked), with its validation numbers and decision."""

    sizes: list[int | None]
    model: nn.Module | None  # None once another size is kept
    records: list[dict[str, Any]] = field(default_factory=list)
    modules: list[tuple[str, nn.Module]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    val_projection: float | None = None
    val_finetune: float | None = None
    projection: BudgetDecision | None = None  # the projection's own decision
    decision: BudgetDecision | None = None    # the kept state's decision (fine-tuned if it was)
    finetuned: bool = False

    @property
    def unchanged(self) -> bool:
        return all(k is None for k in self.sizes)

    def summary(self) -> dict[str, Any]:
        d, p = self.decision, self.projection
        return {"K": self.sizes, "val_after_projection": self.val_projection, "val_after_finetune": self.val_finetune,
                "projection_bound": None if p is None else round(p.bound, 4), "finetuned": self.finetuned,
                "bound": None if d is None else round(d.bound, 4), "accepted": None if d is None else d.accepted}

    def describe(self) -> str:
        if self.unchanged:
            return "every stack as it was: the stage's input, kept"
        sizes = "K=" + ",".join("D" if k is None else str(k) for k in self.sizes)
        if self.decision is None:
            return f"{sizes}: not judged (no validation data)"
        how = f"fine-tuned bound {self.decision.bound:.2f}" if self.finetuned else f"bound {self.decision.bound:.2f}"
        return f"{sizes}: {how} {'within' if self.decision.accepted else 'over'}"


def search_notes(fits: list[SizeFit], budget: float, confidence: float, run_max_drop: float, cfg,
                 chances: int = 1) -> list[str]:
    """The report's lines on the sizes tried, the rule that judged them, and a warning when nothing was saved."""
    kept = fits[-1]
    if kept.decision is None and not kept.unchanged:
        return ["no validation data: the configured size is kept unjudged"]
    rule = (f"size rule: a size is kept only if the {per_look_confidence(confidence, chances):.1%} upper confidence "
            f"bound ({confidence:.0%} for the whole search of {chances} looks: judge/looks.py) on its paired "
            f"validation drop is within {budget:.2f} points ("
            + ("basis.max_drop" if cfg.max_drop is not None else "basis's default share") + f" of --max-drop "
            f"{run_max_drop:.2f}); " + (f"K x {cfg.grow_factor:g} while over" if cfg.grow else
                                        "basis.grow=false: K is not grown"))
    notes = [rule, "sizes tried: " + "; ".join(f.describe() for f in fits)]
    if kept.unchanged:
        notes.append("WARNING: no size with fewer functions than blocks is within budget on validation: every "
                     "stack is left as it was and basis saves nothing on this model and data (these blocks are "
                     "not smooth in depth; a larger --max-drop or --val-data, or basis.finetune_epochs, leaves "
                     "room)")
    elif not kept.decision.accepted:
        notes.append(f"WARNING: the size kept is over budget on validation ({kept.decision.describe()}); the "
                     "run's gate reports the result")
    return notes
