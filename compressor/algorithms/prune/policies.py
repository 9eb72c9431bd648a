"""Which weights to prune next: saliency policies of Stier et al. (arXiv 2107.12917) and LOBSTER's threshold.

All policies rank still-unpruned weights by a saliency and prune an exact count (ties broken by position, never
by a `>=` threshold that would prune or keep every tied weight):
- class-blinded: |w|, one global ranking (per-layer rates then differ);
- class-uniform: |w| ranked inside each layer, every layer reaching the same sparsity;
- class-distribution: |w| / std(unpruned weights of the layer), one global ranking (Han et al. 2015's
  lambda*sigma_l; std over unpruned weights only, since counting zeros makes sigma drift).
LOBSTER (Tartaglione et al. 2022) searches a global |w| threshold by bisection instead (see `lobster_masks`).
"""
from __future__ import annotations

from typing import Callable

import torch

Masks = dict[str, torch.Tensor]


class Saliency:
    """A saliency policy: how still-unpruned weights are scored, and whether one ranking spans all layers."""

    per_layer: bool = False

    def scores(self, w: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return w.detach().abs().float().reshape(-1)


POLICIES: dict[str, type[Saliency]] = {}


def register_policy(name: str):
    def add(cls: type[Saliency]) -> type[Saliency]:
        POLICIES[name] = cls
        return cls
    return add


@register_policy("blinded")
class ClassBlinded(Saliency):
    """|w|, one global ranking."""


@register_policy("uniform")
class ClassUniform(Saliency):
    """|w| ranked inside each layer."""

    per_layer = True


@register_policy("distribution")
class ClassDistribution(Saliency):
    """|w| / std of the layer's unpruned weights, one global ranking."""

    def scores(self, w: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        a = super().scores(w, keep)
        alive = a[keep.reshape(-1)]
        std = alive.std() if alive.numel() > 1 else alive.new_tensor(1.0)
        return a / std.clamp(min=1e-12)


def keep_one_if_empty(keep: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Never empty a layer: a keep-mask with nothing kept keeps the layer's largest |w| (in place)."""
    if not bool(keep.any()):
        keep.reshape(-1)[int(torch.argmax(weight.detach().abs().reshape(-1).cpu()))] = True
    return keep


def _prune_lowest(scores: torch.Tensor, alive: torch.Tensor, count: int) -> torch.Tensor:
    """Flat keep-mask with `count` more of the alive entries (lowest score first, ties by position) pruned."""
    keep = alive.clone()
    if count <= 0:
        return keep
    idx = torch.nonzero(alive, as_tuple=False).reshape(-1)
    order = torch.sort(scores[idx], stable=True).indices[:count]
    keep[idx[order]] = False
    return keep


def ranked_masks(policy: str, weights: dict[str, torch.Tensor], masks: Masks, target: float) -> Masks:
    """New keep-masks reaching `target` sparsity over all given weights (uniform: in every layer)."""
    names = list(weights)
    saliency = POLICIES[policy]()
    alive = {n: masks[n].reshape(-1).to(torch.bool).cpu() for n in names}
    if saliency.per_layer:
        out = {}
        for n in names:
            numel = alive[n].numel()
            to_prune = int(round(target * numel)) - int((~alive[n]).sum())
            to_prune = min(to_prune, int(alive[n].sum()) - 1)  # never empty a layer
            scores = saliency.scores(weights[n].cpu(), alive[n])
            out[n] = _prune_lowest(scores, alive[n], to_prune).reshape(weights[n].shape)
        return out
    scores = torch.cat([saliency.scores(weights[n].cpu(), alive[n]) for n in names])
    flat_alive = torch.cat([alive[n] for n in names])
    total = flat_alive.numel()
    to_prune = int(round(target * total)) - int((~flat_alive).sum())
    keep = _prune_lowest(scores, flat_alive, to_prune)
    out, start = {}, 0
    for n in names:
        numel = alive[n].numel()
        m = keep_one_if_empty(keep[start:start + numel].clone(), weights[n])
        out[n] = m.reshape(weights[n].shape)
        start += numel
    return out


def lobster_masks(weights: dict[str, torch.Tensor], masks: Masks, loss_with: Callable[[Masks], float],
                  limit: float, target: float, iters: int = 12) -> Masks:
    """Bisection on a global threshold T: the largest T (pruning |w| < T among unpruned weights, up to `target`)
    whose validation loss stays below `limit` = L_val * (1 + twt)."""
    alive_abs = torch.cat([weights[n].detach().abs().reshape(-1).cpu()[masks[n].reshape(-1).cpu()] for n in weights])
    lo, hi = 0.0, float(alive_abs.max()) if alive_abs.numel() else 0.0
    best = {n: masks[n].clone() for n in weights}

    def at(t: float) -> Masks:
        return {n: masks[n].cpu() & (weights[n].detach().abs().cpu() >= t) for n in weights}

    for _ in range(iters):
        mid = (lo + hi) / 2
        cand = at(mid)
        total = sum(m.numel() for m in cand.values())
        sparsity = 1 - sum(int(m.sum()) for m in cand.values()) / total
        if sparsity > target + 1e-9 or loss_with(cand) > limit:
            hi = mid
        else:
            lo, best = mid, cand
    for n, m in best.items():
        keep_one_if_empty(m, weights[n])
    return best
