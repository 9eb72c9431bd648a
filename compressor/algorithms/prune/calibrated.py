"""Activation-aware pruning criteria for linear weights, from one calibration pass (no retraining in themselves):

- Wanda (Sun, Liu, Bair, Kolter, "A Simple and Effective Pruning Approach for Large Language Models", ICLR 2024,
  arXiv 2306.11695): score |W_ij| * ||X_j||_2, the weight times the L2 norm of its input feature over the
  calibration tokens, compared within each output row (every row loses the same fraction).
- SparseGPT (Frantar, Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot",
  ICML 2023, arXiv 2301.00774): layer-wise optimal brain surgeon with H = X^T X / n (+1% of its mean diagonal as
  damping); columns are visited in blocks of 128, each block's mask chosen by w^2 / [H^-1]_jj^2 (adaptive mask
  selection), and every pruned weight's error is spread over the not yet visited columns of its row through the
  Cholesky factor of H^-1, so the layer's output on the calibration inputs moves as little as possible.

Both read X, the inputs of each linear weight, from the model's ordinary forward on calibration rows: a
TorchFunctionMode sees every `linear` call (an eager `F.linear` and a `.pt2` graph's `aten.linear` alike) and
keeps X^T X per weight, so no module class or layer name is assumed. A weight never seen as a `linear` weight
(a convolution, a weight read through `matmul`) is pruned by |w| within the layer instead, and the note says how
many. Every layer reaches the same sparsity (the papers' uniform per-layer rate). The layers are calibrated once
on the model as it is at the step (the measured sequential variant, each layer calibrated on the pruned layers
before it, was no better on all-MiniLM-L6-v2 and took 5-10x as long: docs/ALGORITHMS.md §2). The stage keeps a
step whose one-shot result is already within budget without fine-tuning it. Memory: X^T X is kept in float64 for
every linear weight at once, 8 d_in^2 bytes each (all-MiniLM-L6-v2: 150 MB; a BERT-base: 1.2 GB).
"""
from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from compressor.core.contract import StageContext
from compressor.io.data import calibration_subset
from compressor.runtime.calls import call_model, set_train

CALIB_BATCH = 64
BLOCK = 128      # SparseGPT's column block
DAMP = 0.01      # SparseGPT's damping, a fraction of the mean diagonal of H
LINEAR_NAMES = {"linear", "linear.default"}


class _InputGram(TorchFunctionMode):
    """X^T X and the row count of the input of each watched weight, over every `linear` call that reads it."""

    def __init__(self, watched: dict[int, str]) -> None:
        super().__init__()
        self.watched = watched
        self.gram: dict[str, torch.Tensor] = {}
        self.rows: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        name = self.watched.get(id(weight)) if isinstance(weight, torch.Tensor) else None
        if name is not None and getattr(func, "__name__", "") in LINEAR_NAMES and weight.ndim == 2:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            g = x.T @ x
            self.gram[name] = self.gram[name] + g if name in self.gram else g
            self.rows[name] = self.rows.get(name, 0) + x.shape[0]
        return func(*args, **kwargs)


@torch.no_grad()
def input_grams(ctx: StageContext, params: dict[str, torch.Tensor], samples: int) -> dict[str, torch.Tensor]:
    """H = X^T X / n of each weight's input over up to `samples` calibration rows (seeded), for the weights read
    by a linear op; the others are absent."""
    data = calibration_subset(ctx.calib if ctx.calib is not None else ctx.train, samples, ctx.stage_seed + 2)
    tap = _InputGram({id(p): n for n, p in params.items()})
    set_train(ctx.model, False)
    with tap:
        for batch in data.batches(CALIB_BATCH):
            call_model(ctx.model, batch, ctx.device)
    return {n: (g / max(tap.rows[n], 1)).cpu() for n, g in tap.gram.items()}


def _prune_rows(scores: torch.Tensor, keep: torch.Tensor, count: int) -> torch.Tensor:
    """`keep` with the `count` lowest-scored entries of each row pruned (pruned ones first; ties by position)."""
    scores = torch.where(keep, scores, torch.full_like(scores, -1.0))
    order = torch.sort(scores, dim=1, stable=True).indices[:, :count]
    out = torch.ones_like(keep)
    out.scatter_(1, order, False)
    return out & keep


def wanda(weight: torch.Tensor, keep: torch.Tensor, gram: torch.Tensor | None, target: float) -> torch.Tensor:
    """Wanda's keep-mask at `target` sparsity per output row (|w| alone without a gram: per-row magnitude)."""
    w = weight.detach().float().cpu().reshape(weight.shape[0], -1)
    norm = torch.ones(w.shape[1]) if gram is None else torch.diag(gram).clamp(min=0).sqrt().float()
    count = int(round(target * w.shape[1]))
    return _prune_rows(w.abs() * norm[None], keep.reshape(w.shape).cpu(), count).reshape(weight.shape)


def sparsegpt(weight: torch.Tensor, keep: torch.Tensor, gram: torch.Tensor, target: float) -> torch.Tensor:
    """SparseGPT at `target` sparsity of the layer: updates `weight` in place, returns its keep-mask."""
    w = weight.detach().double().cpu().clone()
    keep = keep.reshape(w.shape).cpu().clone()
    h = gram.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += DAMP * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], dtype=h.dtype)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    cols = w.shape[1]
    for i1 in range(0, cols, BLOCK):
        i2 = min(i1 + BLOCK, cols)
        w1, h1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        err = torch.zeros_like(w1)
        score = (w1 ** 2 / torch.diag(h1)[None] ** 2).masked_fill(~keep[:, i1:i2], -1.0)
        count = int(round(target * score.numel()))
        block_keep = torch.ones(score.numel(), dtype=torch.bool)
        block_keep[torch.sort(score.reshape(-1), stable=True).indices[:count]] = False
        block_keep = block_keep.reshape(score.shape) & keep[:, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, i]
            q = col * block_keep[:, i]
            err[:, i] = (col - q) / h1[i, i]
            w1[:, i:] -= err[:, i:i + 1] @ h1[i:i + 1, i:]
            w1[:, i] = q
        w[:, i1:i2] = w1
        keep[:, i1:i2] = block_keep
        w[:, i2:] -= err @ hinv[i1:i2, i2:]
    with torch.no_grad():
        weight.copy_((w * keep).to(weight.dtype).reshape(weight.shape))
    return keep.reshape(weight.shape)


def calibrated_masks(ctx: StageContext, criterion: str, params: dict[str, torch.Tensor],
                     masks: dict[str, torch.Tensor], target: float, samples: int) -> tuple[dict, int]:
    """New keep-masks at `target` sparsity in every layer by `criterion` (wanda | sparsegpt; sparsegpt also updates
    the kept weights); and how many weights had no calibrated input (pruned by |w| within each row instead)."""
    grams = input_grams(ctx, params, samples)
    out, missing = {}, 0
    for n, p in params.items():
        gram = grams.get(n)
        missing += gram is None
        if criterion == "sparsegpt" and gram is not None:
            out[n] = sparsegpt(p, masks[n], gram, target)
        else:
            out[n] = wanda(p, masks[n], gram, target)
    return out, missing
