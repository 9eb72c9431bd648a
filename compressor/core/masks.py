"""The shared mask utility: which weights are pruned, kept exactly zero through every later step.

Masks are applied after every optimizer step (`apply`), carried through later stages, and baked into the
weights before export (a mask is never exported as a separate tensor; see docs/ALGORITHMS.md §2 on
`torch.nn.utils.prune` doubling the file size).
"""
from __future__ import annotations

import torch
from torch import nn


class MaskRegistry:
    """Boolean keep-masks by parameter name (True = kept)."""

    def __init__(self) -> None:
        self.masks: dict[str, torch.Tensor] = {}

    def __bool__(self) -> bool:
        return bool(self.masks)

    def __contains__(self, name: str) -> bool:
        return name in self.masks

    def get(self, name: str) -> torch.Tensor | None:
        return self.masks.get(name)

    def set(self, name: str, keep: torch.Tensor) -> None:
        self.masks[name] = keep.detach().to(torch.bool).clone()

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """Zero every masked weight in place (call after each optimizer step)."""
        params = dict(model.named_parameters())
        for name, keep in self.masks.items():
            p = params.get(name)
            if p is not None:
                p.mul_(keep.to(device=p.device, dtype=p.dtype))

    def mask_grads(self, model: nn.Module) -> None:
        """Zero the gradients of pruned weights (so momentum does not revive them)."""
        params = dict(model.named_parameters())
        for name, keep in self.masks.items():
            p = params.get(name)
            if p is not None and p.grad is not None:
                p.grad.mul_(keep.to(device=p.device, dtype=p.grad.dtype))

    def sparsity(self) -> float:
        total = sum(m.numel() for m in self.masks.values())
        kept = sum(int(m.sum()) for m in self.masks.values())
        return 1.0 - kept / total if total else 0.0

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.masks.items()}
