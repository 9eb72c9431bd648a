"""Weight sharing: replace a layer's non-zero weights by the nearest of 2^bits shared values (1-D k-means).

Deep Compression (Han, Mao, Dally, ICLR 2016) §3: k-means over each layer's non-zeros with linear
initialisation between min and max (the initialisation they found best, as it keeps the rare large weights),
zeros left untouched, so the result is stored exactly by the ``codebook`` encoding at ``bits`` per non-zero.
"""
from __future__ import annotations

import torch
from torch import nn


def kmeans_1d(values: torch.Tensor, k: int, iters: int = 30) -> torch.Tensor:
    """Deterministic 1-D k-means (linear init); returns the sorted centroids."""
    v = values.detach().double()
    if v.numel() <= k:
        return torch.unique(v).float()
    centroids = torch.linspace(float(v.min()), float(v.max()), k, dtype=torch.float64)
    for _ in range(iters):
        boundaries = (centroids[1:] + centroids[:-1]) / 2
        assign = torch.bucketize(v, boundaries)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, assign, v)
        counts = torch.zeros(k, dtype=torch.float64).index_add_(0, assign, torch.ones_like(v))
        new = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        if torch.allclose(new, centroids, atol=0, rtol=1e-9):
            break
        centroids = new.sort().values
    centroids = centroids[centroids != 0]
    return torch.unique(centroids.float())


@torch.no_grad()
def share_weights(model: nn.Module, names: list[str], bits: int = 4) -> dict[str, int]:
    """Quantize the non-zeros of each named weight onto its own codebook, in place. Returns codebook sizes."""
    params = dict(model.named_parameters())
    sizes = {}
    for name in names:
        p = params[name]
        flat = p.data.reshape(-1)
        nz = flat != 0
        if not bool(nz.any()):
            continue
        cb = kmeans_1d(flat[nz], 1 << bits).to(p.device)
        boundaries = (cb[1:] + cb[:-1]) / 2
        flat[nz] = cb[torch.bucketize(flat[nz].float(), boundaries)].to(p.dtype)
        sizes[name] = int(cb.numel())
    return sizes


class SharedWeights:
    """Trained quantization (Deep Compression §3.2): keep each weight's cluster assignment fixed and, after
    every optimizer step, move each centroid to the mean of its weights and snap the weights back onto it."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        params = dict(model.named_parameters())
        self.layers = []
        for n in names:
            p = params[n]
            flat = p.detach().reshape(-1)
            nz = flat != 0
            if not bool(nz.any()):
                continue
            cb, assign = torch.unique(flat[nz], return_inverse=True)
            self.layers.append((p, nz, assign, cb.numel()))

    @torch.no_grad()
    def step_hook(self, model: nn.Module) -> None:
        for p, nz, assign, k in self.layers:
            flat = p.data.reshape(-1)
            vals = flat[nz]
            sums = torch.zeros(k, dtype=vals.dtype, device=vals.device).index_add_(0, assign, vals)
            counts = torch.zeros(k, dtype=vals.dtype, device=vals.device).index_add_(0, assign, torch.ones_like(vals))
            flat[nz] = (sums / counts.clamp(min=1))[assign]
