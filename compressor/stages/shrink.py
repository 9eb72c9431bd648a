"""shrink: fine-tune with selective shrinkage of the weights the loss is insensitive to.

Bonetta, Ribero, Cancelliere, "Regularization-based Pruning of Irrelevant Weights in Deep Neural Architectures",
Applied Intelligence 2023 (arXiv 2204.04977). With g = dL/dw of the current minibatch (treated as a constant),
the relevance-decay regularizer R(w) = gamma * sum exp(-|g|/alpha) w^2 gives the update

    w <- w - eta * (g + 2 * gamma * exp(-|g|/alpha) * w)

applied in ONE backward pass by adding the decay to the gradient before the optimizer step (the authors' code
does two). Irrelevant weights (|g| ~ 0) get the full decay, relevant ones (|g| >> alpha) a classic update; a
weight counts as relevant when exp(-|g|/alpha) < 0.5. alpha is scaled per layer by default (alpha_l = median
|g| of layer l, refreshed each epoch): on small models the paper's alpha = 1 is not selective at all
(ALGORITHMS.md §1); the absolute alpha is an option. Variant: the LOBSTER rule (Tartaglione et al., Neural
Networks 2022), w <- w - lambda * w * max(0, 1 - |g|) after the step. Optional manifold-preserving term
(ours, seeded by Sartipi & Bernal, arXiv 2305.17119): mu * sum_l ||G(H_l) - G(F_l)||^2 / B^2 between the
row-normalised Gram matrices of chosen layers' features in the compressed (H) and frozen original (F) model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from compressor.features import FeatureTap, manifold_loss
from compressor.finetune import FinetuneSettings, finetune
from compressor.layers import select
from compressor.stage import Stage, StageResult, option, register_stage

INERT_LOW, INERT_HIGH = 0.01, 0.99


@dataclass
class ShrinkConfig:
    rule: Literal["relevance", "lobster"] = option("relevance", "relevance-decay regularizer, or the LOBSTER rule")
    gamma: float = option(1e-4, "strength of the relevance decay (the paper used 1e-5 with SGD-scale gradients)")
    alpha_mode: Literal["per_layer", "absolute"] = option("per_layer", "alpha from each layer's median |g| "
                                                          "(refreshed each epoch), or the absolute `alpha`")
    alpha: float = option(1.0, "absolute alpha (alpha_mode=absolute; the paper's default)")
    alpha_scale: float = option(1.0, "per-layer alpha = alpha_scale x median |g| of the layer")
    lobster_lambda: float = option(1e-4, "LOBSTER decay lambda (rule=lobster)")
    epochs: int = option(10, "fine-tuning epochs")
    lr: float = option(1e-3, "learning rate (cosine annealed)")
    batch_size: int = option(100, "minibatch size")
    optimizer: Literal["adam", "sgd"] = option("adam", "optimizer (LOBSTER's paper used SGD, lr 0.1)")
    include: tuple[str, ...] = option((), "glob patterns of parameters to shrink (default: conv/linear weights)")
    exclude: tuple[str, ...] = option((), "glob patterns of parameters never shrunk")
    mu: float = option(0.0, "weight of the manifold-preserving term (0: off)")
    manifold_layers: tuple[str, ...] = option((), "module paths (globs) whose outputs keep their geometry "
                                              "(default: the shrunk layers' outputs)")

    def validate(self) -> str | None:
        for key in ("gamma", "alpha", "alpha_scale", "lobster_lambda", "lr", "mu"):
            if getattr(self, key) < 0:
                return f"{key} must be non-negative"
        if self.epochs < 1 or self.batch_size < 1:
            return "epochs and batch_size must be at least 1"
        if self.lr <= 0:
            return "lr must be positive"
        if self.alpha <= 0 or self.alpha_scale <= 0:
            return "alpha and alpha_scale must be positive"
        return None


class SelectiveShrinkage:
    """Gradient hook (and, for LOBSTER, step hook) applying the shrinkage rule to the chosen parameters."""

    def __init__(self, model: nn.Module, names: list[str], cfg: ShrinkConfig, steps_per_epoch: int) -> None:
        params = dict(model.named_parameters())
        self.params = {n: params[n] for n in names}
        self.cfg = cfg
        self.refresh = max(1, steps_per_epoch)
        self.alpha: dict[str, float] = {}
        self.sensitivity: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def grad_hook(self, model: nn.Module, step: int) -> dict[str, float]:
        relevant = total = 0
        for name, p in self.params.items():
            if p.grad is None:
                continue
            g = p.grad.abs()
            if self.cfg.rule == "relevance":
                if self.cfg.alpha_mode == "absolute":
                    alpha = self.cfg.alpha
                else:
                    if step % self.refresh == 0 or name not in self.alpha:
                        self.alpha[name] = max(float(g.median()) * self.cfg.alpha_scale, 1e-12)
                    alpha = self.alpha[name]
                factor = torch.exp(-g / alpha)
                p.grad.add_(2.0 * self.cfg.gamma * factor * p.data)
            else:
                factor = torch.clamp(1.0 - g, min=0.0)
                self.sensitivity[name] = factor
            relevant += int((factor < 0.5).sum())
            total += factor.numel()
        return {"relevant": relevant / total if total else 0.0}

    @torch.no_grad()
    def step_hook(self, model: nn.Module) -> None:
        if self.cfg.rule != "lobster":
            return
        for name, p in self.params.items():
            factor = self.sensitivity.get(name)
            if factor is not None:
                p.data.sub_(self.cfg.lobster_lambda * p.data * factor)


def shrink_targets(weights, cfg) -> list[str]:
    return [w.name for w in select(weights, cfg.include, cfg.exclude)]


def run_shrinkage(ctx, cfg: ShrinkConfig, epochs: int, desc: str, keep_start: bool):
    """Fine-tune ctx.model with selective shrinkage (shared with prune's fine-tuning between steps)."""
    train, _ = ctx.require_training(desc)
    names = shrink_targets(ctx.weights, cfg)
    steps = math.ceil(len(train) / cfg.batch_size)
    rule = SelectiveShrinkage(ctx.model, names, cfg, steps)
    settings = FinetuneSettings(epochs=epochs, lr=cfg.lr, batch_size=cfg.batch_size, optimizer=cfg.optimizer)
    loss_hook, taps = None, []
    if cfg.mu > 0:
        taps = [FeatureTap(ctx.model, names, cfg.manifold_layers), FeatureTap(ctx.original, names, cfg.manifold_layers)]
        from compressor.evaluate import call_model

        def loss_hook(model, batch, out):
            with torch.no_grad():
                call_model(ctx.original, batch, ctx.device)
            return cfg.mu * manifold_loss(taps[0].features, taps[1].features)
    try:
        result = finetune(ctx, ctx.model, settings, desc=desc, grad_hook=rule.grad_hook, step_hook=rule.step_hook,
                          loss_hook=loss_hook, keep_start=keep_start)
    finally:
        for t in taps:
            t.close()
    return result, names


def small_fraction(model: nn.Module, names: list[str], threshold: float = 1e-3) -> float:
    params = dict(model.named_parameters())
    total = sum(params[n].numel() for n in names)
    small = sum(int((params[n].detach().abs() < threshold).sum()) for n in names)
    return small / total if total else 0.0


@register_stage
class ShrinkStage(Stage):
    name = "shrink"
    summary = "fine-tune with selective shrinkage: irrelevant weights decay, relevant ones get a classic update"
    Config = ShrinkConfig
    follows = frozenset()
    needs_training_data = True

    @classmethod
    def default_targets(cls, weights, model) -> list[str]:
        return shrink_targets(weights, ShrinkConfig())

    def apply(self, ctx) -> StageResult:
        cfg = self.config
        before = small_fraction(ctx.model, shrink_targets(ctx.weights, cfg))
        result, names = run_shrinkage(ctx, cfg, cfg.epochs, "shrink", keep_start=False)
        after = small_fraction(ctx.model, names)
        relevant = [h.get("relevant", 0.0) for h in result.history[1:]]
        notes = [f"{cfg.rule} rule on {len(names)} tensors; best validation {result.best.value:.2f} at epoch "
                 f"{result.best_epoch}; |w| < 1e-3: {before:.1%} -> {after:.1%}",
                 "per epoch (loss / validation % / fraction relevant): " + "; ".join(
                     f"{h['loss']:.4f} / {h['val']:.2f} / {h.get('relevant', 0.0):.3f}" for h in result.history[1:])]
        mean_rel = sum(relevant) / len(relevant) if relevant else 0.0
        if mean_rel < INERT_LOW or mean_rel > INERT_HIGH:
            notes.append(f"WARNING: the fraction of relevant weights is ~{mean_rel:.3f}: the selective part is inert "
                         "(the rule acts as plain decay or not at all); adjust alpha/alpha_scale")
        history = [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in h.items()} for h in result.history]
        return StageResult(model=ctx.model, notes=notes,
                           metrics={"history": history, "small_weight_fraction": after, "relevant_mean": mean_rel})
