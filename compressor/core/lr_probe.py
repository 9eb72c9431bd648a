"""The fine-tuning learning rate fitted to the model and data by a short probe, when the user set none.

Why: one default rate (Adam at 1e-3) suits a small network trained from scratch at that rate, but its first steps
move every weight of a pretrained transformer by about 1e-3, far outside the minimum it was trained into; its
fine-tunes then make validation worse and are thrown away, and their time buys nothing. Pretrained transformers
are usually fine-tuned at 1e-5 to 1e-4.

How, after Smith's learning-rate range test ("Cyclical learning rates for training neural networks", WACV 2017)
but judged on training rows the probe never trains on: from the same state, PROBE_STEPS optimizer steps at each
candidate rate (the default, then /3, /10, /30, /100) on the same seeded batches of the other training rows, then
the training loss on the held-aside rows. The largest rate whose loss is within PROBE_TOLERANCE of the lowest is
chosen: the default stays unless a smaller rate is clearly better. The model's state is restored after each
candidate and torch's random streams after the probe, so a probe that keeps the default changes nothing else in
the run; in a data-parallel run rank 0's choice is every rank's.
Validation is not used (it judges the fine-tuned result), nor held-out data.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from compressor.core.contract import StageContext
from compressor.core.finetune import enter_training
from compressor.core.precision import MixedPrecision
from compressor.io.data import Dataset
from compressor.runtime.calls import call_model, set_train
from compressor.runtime.parallel import from_rank0

FACTORS = (1.0, 1 / 3, 1 / 10, 1 / 30, 1 / 100)
PROBE_STEPS = 20      # optimizer steps per candidate (fewer on a small training set: at most half an epoch)
PROBE_ROWS = 256      # held-aside training rows the probe's loss is measured on (at most a fifth of the set)
PROBE_TOLERANCE = 0.1  # a larger rate is kept while its loss is within 10% of the lowest


@dataclass
class ProbeResult:
    lr: float
    losses: dict[float, float]  # candidate rate -> loss on the held-aside rows after its steps
    start: float                # that loss before any step

    def describe(self) -> str:
        if not self.losses:
            return f"lr {self.lr:.0e} (the default: too few training rows for the probe)"
        tried = ", ".join(f"{lr:.0e}: {loss:.4g}" for lr, loss in self.losses.items())
        return (f"lr {self.lr:.0e} fitted by a short probe ({len(self.losses)} rates from the same state, loss on "
                f"held-aside training rows {self.start:.4g} before; after: {tried})")


def fit_lr(ctx: StageContext, model: nn.Module, default: float, batch_size: int, loss_fn, seed: int) -> ProbeResult:
    """The learning rate for fine-tuning `model` (module docstring). `loss_fn(model, batch, out)` is the fine-tune's
    loss (task loss plus the stage's terms)."""
    train, _ = ctx.require_training("lr probe")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train), generator=gen)
    held = min(PROBE_ROWS, len(train) // 5)
    if held < 2:
        return ProbeResult(default, {}, math.nan)  # too few training rows to hold any aside
    aside, rest = train.subset(order[:held]), train.subset(order[held:])
    steps = max(1, min(PROBE_STEPS, math.ceil(len(rest) / batch_size) // 2))
    devices = [ctx.device] if ctx.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # the run's random streams as they were
        result = _probe(ctx, model, default, batch_size, loss_fn, seed, aside, rest, steps)
    return ProbeResult(from_rank0(result.lr), result.losses, result.start)  # one rate on every rank


def _probe(ctx: StageContext, model: nn.Module, default: float, batch_size: int, loss_fn, seed: int,
           aside: Dataset, rest: Dataset, steps: int) -> ProbeResult:
    state = copy.deepcopy(model.state_dict())
    start = _loss(ctx, model, aside, loss_fn)
    losses = {}
    try:
        for factor in FACTORS:
            lr = default * factor
            opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
            batches = rest.batches(batch_size, torch.Generator().manual_seed(seed))
            mixed = MixedPrecision(ctx.precision, ctx.device)  # the fine-tunes' own steps
            enter_training(ctx, model, rest)
            for _, batch in zip(range(steps), batches):
                opt.zero_grad(set_to_none=True)
                with mixed.autocast():
                    out = call_model(model, batch, ctx.device)
                mixed.backward(loss_fn(model, batch, out.float() if out.is_floating_point() else out))
                if not mixed.unscale(opt):
                    mixed.step(opt)  # skipped by the scaler: an fp16 overflow
                    continue
                ctx.masks.mask_grads(model)
                mixed.step(opt)
                ctx.masks.apply(model)
            set_train(model, False)
            losses[lr] = _loss(ctx, model, aside, loss_fn)
            model.load_state_dict(state)
    finally:
        model.load_state_dict(state)
        set_train(model, False)
    finite = {lr: v for lr, v in losses.items() if math.isfinite(v)}
    if not finite:
        return ProbeResult(default, losses, start)
    best = min(finite.values())
    chosen = max(lr for lr, v in finite.items() if v <= best + PROBE_TOLERANCE * abs(best))
    return ProbeResult(chosen, losses, start)


@torch.no_grad()
def _loss(ctx: StageContext, model: nn.Module, data: Dataset, loss_fn) -> float:
    set_train(model, False)
    total = 0.0
    for batch in data.batches(256):
        total += float(loss_fn(model, batch, call_model(model, batch, ctx.device))) * len(batch)
    return total / max(len(data), 1)
