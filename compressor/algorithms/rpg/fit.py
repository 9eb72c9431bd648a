"""rpg: fit one ring size (project, fine-tune, judge) and the schedule of sizes tried until one is within budget.

The paper (Wang et al., WACV 2023, docs/ALGORITHMS.md §3) fixes the ring size N before training from scratch; our
post-processing adaptation projects a trained model onto the ring, so the cost of a given N is only known after
projection and fine-tuning. A fixed fraction of the generated weights can therefore spend more than the run's
budget on one seed and not on another (measured in docs/ALGORITHMS.md §3). The stage
judges each fitted ring with the run's one rule (`RunContext.judge`, judge/budget.py: a one-sided upper
confidence bound on the paired validation drop within min(rpg's budget, --max-drop)) and, while it is over,
grows N geometrically (rpg.grow_factor g, default 1.5), capped at the number of generated weights T:

    N_0 (from the config),  N_{i+1} = min(ceil(g N_i), T)

By default rpg's budget is half the run's when quantize follows (it spends points too, and a 75% bound passes a
borderline ring one time in four); `rpg.max_drop` sets it.

At N = T every slot is read once (gcd(a, T) = 1 makes the affine map a bijection), so the closed-form projection
reproduces the trained weights exactly: the schedule ends at a ring that costs nothing but also saves nothing.
Each size re-projects the stage's *input* weights (a fresh copy of the model; the failed ring's fine-tuned
ordinary parameters are discarded), with its own seeded affine map (a, b from (seed, N)) and the same seeded
fine-tuning order, so every attempt, and the whole search, is reproducible from --seed.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import torch

from compressor.algorithms.rpg.ring import RingLayer, RingLayout, RingModel, affine_map_params, project, ring_model
from compressor.core.contract import StageContext
from compressor.core.finetune import FinetuneSettings, distill_hook, finetune
from compressor.judge.budget import BudgetDecision


def ring_schedule(n0: int, generated: int, grow: bool, factor: float = 1.5) -> list[int]:
    """The ring sizes to try, in order: N_0, then N_{i+1} = ceil(factor * N_i) while it is below the generated weights
    T (only N_0 without growth). Growth never reaches T: a ring as large as the weights it generates saves nothing,
    so fitting it would only cost time (the stage keeps its input instead); N_0 = T is the user's explicit choice."""
    sizes = [n0]
    while grow and max(math.ceil(factor * sizes[-1]), sizes[-1] + 1) < generated:
        sizes.append(max(math.ceil(factor * sizes[-1]), sizes[-1] + 1))
    return sizes


@dataclass
class RingFit:
    """One ring size, projected and fine-tuned, with its validation numbers and budget decision."""

    n: int
    layout: RingLayout
    model: RingModel | None  # None once another size is kept
    projection_val: float | None
    val: float | None
    epoch: int  # the fine-tuning epoch kept; 0: the projection (no fine-tuning, or it raised the bound)
    decision: BudgetDecision | None

    def summary(self, generated: int) -> dict:
        d = self.decision
        return {"ring_size": self.n, "ring_fraction": round(self.n / generated, 5), "projection_val": self.projection_val,
                "val": self.val, "epoch": self.epoch, "drop": None if d is None else round(d.drop, 4),
                "bound": None if d is None else round(d.bound, 4), "accepted": None if d is None else d.accepted}


def fit_ring(ctx: StageContext, cfg, base: torch.nn.Module, layers: list[RingLayer], n: int, keep: torch.Tensor | None,
             budget: float, status: Callable[[str], None] = lambda message: None, chances: int = 1) -> RingFit:
    """Project `base`'s generated weights onto a ring of N slots (closed form), fine-tune ring and ordinary
    parameters (training set, distillation to the original), and judge the result on validation data; `status`
    gets a progress line after the projection; `chances`: the looks of the whole size search (judge/looks.py).

    `base` is consumed: the ring wrapper takes over its modules and removes the generated parameters."""
    params = dict(base.named_parameters())
    a, b = affine_map_params(ctx.stage_seed, n)
    layout = RingLayout(n, ctx.stage_seed, a, b, [copy.copy(layer) for layer in layers])
    ring = project([params[layer.name] for layer in layers], layout, keep)
    model = ring_model(base, layout, ring, keep).to(ctx.device)
    projection_val = ctx.validate(model).value if ctx.val is not None else None
    if projection_val is not None:
        status(f"N={n:,}: projected, validation {ctx.metric.name} {projection_val:.4g}"
               + (f"; fine-tuning {cfg.epochs} epochs" if cfg.epochs > 0 else ""))
    val, epoch = projection_val, 0
    start = copy.deepcopy(model.state_dict()) if cfg.epochs > 0 else None
    if cfg.epochs > 0:
        settings = FinetuneSettings(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                                    max_steps_per_epoch=cfg.max_steps_per_epoch)
        hook = distill_hook(ctx, cfg.distill, cfg.temperature) if cfg.distill > 0 else None
        best = cfg.select == "best"
        result = finetune(ctx, model, settings, desc=f"rpg fine-tune N={n:,}", loss_hook=hook, select_best=best)
        val = ctx.validate(model).value if ctx.val is not None else None
        epoch = result.best_epoch if best else cfg.epochs
    if ctx.val is None:
        return RingFit(n, layout, model, projection_val, val, epoch, None)
    decision = ctx.judge(budget, model=model, chances=chances)
    if start is not None and not decision.accepted:
        # fine-tuning can also spend budget (a few steps at a high rate; at N = T the projection is exact): the
        # projected state is a candidate too, kept if its bound is lower
        tuned = copy.deepcopy(model.state_dict())
        model.load_state_dict(start)
        projected = ctx.judge(budget, model=model, chances=chances)
        if projected.bound < decision.bound:
            return RingFit(n, layout, model, projection_val, projection_val, 0, projected)
        model.load_state_dict(tuned)
    return RingFit(n, layout, model, projection_val, val, epoch, decision)
