"""Selective shrinkage, shared by the shrink stage and prune's fine-tuning between steps: its config, the
regularisers as hook classes (relevance decay, LOBSTER), and the fine-tuning run that applies them (with the
optional manifold-preserving term). The formulas are in `compressor/algorithms/shrink/stage.py`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from compressor.core.contract import StageContext
from compressor.core.features import FeatureTap, manifold_loss
from compressor.core.finetune import FinetuneSettings, LossHook, finetune
from compressor.core.finetune_options import FinetuneOptions
from compressor.core.layers import select_names
from compressor.runtime.calls import call_model
from compressor.schema import option, with_default


@dataclass
class ShrinkConfig(FinetuneOptions):
    lr: float = with_default(FinetuneOptions, "lr", 1e-3)
    batch_size: int = with_default(FinetuneOptions, "batch_size", 100)
    rule: Literal["relevance", "lobster"] = option("relevance", "relevance-decay regularizer, or the LOBSTER rule")
    gamma: float = option(1e-4, "strength of the relevance decay (the paper used 1e-5 with SGD-scale gradients)",
                          ge=0)
    alpha_mode: Literal["per_layer", "absolute"] = option("per_layer", "alpha from each layer's median |g| "
                                                          "(refreshed each epoch), or the absolute `alpha`")
    alpha: float = option(1.0, "absolute alpha (alpha_mode=absolute; the paper's default)", gt=0)
    alpha_scale: float = option(1.0, "per-layer alpha = alpha_scale x median |g| of the layer", gt=0)
    lobster_lambda: float = option(1e-4, "LOBSTER decay lambda (rule=lobster)", ge=0)
    epochs: int = option(10, "fine-tuning epochs", ge=1)
    optimizer: Literal["adam", "sgd"] = option("adam", "optimizer (LOBSTER's paper used SGD, lr 0.1)")
    include: tuple[str, ...] = option((), "glob patterns of parameters to shrink (default: conv/linear weights)")
    exclude: tuple[str, ...] = option((), "glob patterns of parameters never shrunk")
    mu: float = option(0.0, "weight of the manifold-preserving term (0: off)", ge=0)
    manifold_layers: tuple[str, ...] = option((), "module paths (globs) whose outputs keep their geometry "
                                              "(default: the shrunk layers' outputs)")


class Regulariser:
    """A shrinkage rule as fine-tuning hooks on chosen parameters: `grad_hook` after backward (returns the fraction
    of relevant weights, exp(-|g|/alpha) or max(0, 1 - |g|) below 0.5), `step_hook` after the optimizer step."""

    def __init__(self, model: nn.Module, names: list[str], cfg: ShrinkConfig, steps_per_epoch: int) -> None:
        params = dict(model.named_parameters())
        self.params = {n: params[n] for n in names}
        self.cfg = cfg
        self.refresh = max(1, steps_per_epoch)

    def factor(self, name: str, g: torch.Tensor, p: torch.Tensor, step: int) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def grad_hook(self, model: nn.Module, step: int) -> dict[str, float]:
        relevant = total = 0
        for name, p in self.params.items():
            if p.grad is None:
                continue
            factor = self.factor(name, p.grad.abs(), p, step)
            relevant += int((factor < 0.5).sum())
            total += factor.numel()
        return {"relevant": relevant / total if total else 0.0}

    def step_hook(self, model: nn.Module) -> None:
        return None


class RelevanceDecay(Regulariser):
    """Bonetta et al.: g <- g + 2 gamma exp(-|g|/alpha) w before the step (alpha per layer or absolute)."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.alpha: dict[str, float] = {}

    def factor(self, name: str, g: torch.Tensor, p: torch.Tensor, step: int) -> torch.Tensor:
        if self.cfg.alpha_mode == "absolute":
            alpha = self.cfg.alpha
        else:
            if step % self.refresh == 0 or name not in self.alpha:
                self.alpha[name] = max(float(g.median()) * self.cfg.alpha_scale, 1e-12)
            alpha = self.alpha[name]
        factor = torch.exp(-g / alpha)
        p.grad.add_(2.0 * self.cfg.gamma * factor * p.data)
        return factor


class LobsterRule(Regulariser):
    """Tartaglione et al.: w <- w - lambda w max(0, 1 - |g|) after the step."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.sensitivity: dict[str, torch.Tensor] = {}

    def factor(self, name: str, g: torch.Tensor, p: torch.Tensor, step: int) -> torch.Tensor:
        factor = torch.clamp(1.0 - g, min=0.0)
        self.sensitivity[name] = factor
        return factor

    @torch.no_grad()
    def step_hook(self, model: nn.Module) -> None:
        for name, p in self.params.items():
            factor = self.sensitivity.get(name)
            if factor is not None:
                p.data.sub_(self.cfg.lobster_lambda * p.data * factor)


REGULARISERS: dict[str, type[Regulariser]] = {"relevance": RelevanceDecay, "lobster": LobsterRule}


def selective_shrinkage(model: nn.Module, names: list[str], cfg: ShrinkConfig, steps_per_epoch: int) -> Regulariser:
    """The hooks of `cfg.rule` on the named parameters."""
    return REGULARISERS[cfg.rule](model, names, cfg, steps_per_epoch)


def shrink_targets(weights, cfg) -> list[str]:
    return select_names(weights, cfg.include, cfg.exclude)


def run_shrinkage(ctx: StageContext, cfg: ShrinkConfig, epochs: int, desc: str, keep_start: bool,
                  max_steps_per_epoch: int = 0, extra_loss: LossHook | None = None):
    """Fine-tune ctx.model with selective shrinkage (shared with prune's fine-tuning between steps); `extra_loss`
    (e.g. prune's distillation term) is added to the task loss and the manifold term."""
    train, _ = ctx.require_training(desc)
    names = shrink_targets(ctx.weights, cfg)
    steps = math.ceil(len(train) / cfg.batch_size)
    max_steps_per_epoch = max_steps_per_epoch or cfg.max_steps_per_epoch
    if max_steps_per_epoch:
        steps = min(steps, max_steps_per_epoch)
    rule = selective_shrinkage(ctx.model, names, cfg, steps)
    settings = FinetuneSettings(epochs=epochs, lr=cfg.lr, batch_size=cfg.batch_size, optimizer=cfg.optimizer,
                                max_steps_per_epoch=max_steps_per_epoch)
    loss_hook, taps = extra_loss, []
    if cfg.mu > 0:
        taps = [FeatureTap(ctx.model, names, cfg.manifold_layers), FeatureTap(ctx.original, names, cfg.manifold_layers)]
        def loss_hook(model, batch, out):
            with torch.no_grad():
                call_model(ctx.original, batch, ctx.device)
            term = cfg.mu * manifold_loss(taps[0].features, taps[1].features)
            return term if extra_loss is None else term + extra_loss(model, batch, out)
    try:
        result = finetune(ctx, ctx.model, settings, desc=desc, grad_hook=rule.grad_hook, step_hook=rule.step_hook,
                          loss_hook=loss_hook, keep_start=keep_start)
    finally:
        for t in taps:
            t.close()
    return result, names
