"""prune's report lines that read more than one number: the weights prune cannot see, and how its fine-tunes went."""
from __future__ import annotations

import torch

from compressor.core.finetune import FinetuneResult
from compressor.core.params import unique_param_count


READ_BY = {"embedding": "an embedding lookup", "norm": "a normalisation", "other": "no linear/matmul/conv op, e.g. "
           "a fused GRU/LSTM", "linear": "a linear op, left out by prune.include/exclude",
           "conv": "a conv op, left out by prune.include/exclude"}


def uncovered_note(model: torch.nn.Module, names: list[str], kinds: dict[str, str] | None = None) -> str | None:
    """A warning when the prunable weights are under half of the model's parameters (e.g. a GRU/LSTM, whose
    recurrent weights are read by one fused op, or a transformer's token-embedding table: the reported sparsity is of
    the rest). `kinds`: parameter name -> the kind of op that reads it (core/layers.py), to say what reads each."""
    params = {n: p for n, p in model.named_parameters()}
    total = unique_param_count(model)
    covered = sum(params[n].numel() for n in names if n in params)
    if not total or covered >= total / 2:
        return None
    others = sorted((p.numel(), n) for n, p in params.items() if n not in set(names) and p.ndim >= 2)[::-1][:3]
    kinds = kinds or {}
    return (f"WARNING: the prunable weights hold {covered / total:.0%} of the model's {total:,} parameters, so the "
            "sparsity above is of those only; the largest others: "
            + ", ".join(f"{n} ({k:,}, read by {READ_BY.get(kinds.get(n, 'other'), READ_BY['other'])})"
                        for k, n in others)
            + "; name them with prune.include to prune them too")


def finetune_note(tunes: list[FinetuneResult], epochs: int) -> str | None:
    """How prune's fine-tunes went: how many never beat the pruned state they started from by the loss on training
    rows (fine-tuning did not help there; the pruned state was kept and the epochs' time bought nothing)."""
    if not tunes:
        return None
    unhelpful = sum(t.best_epoch == 0 for t in tunes)
    note = f"fine-tunes: {len(tunes)} of {epochs} epochs each"
    if unhelpful:
        note += (f"; in {unhelpful} no epoch beat the pruned state (fine-tuning did not help there: a lower "
                 "prune.lr, or prune.epochs_per_step=0, saves that time)")
    return note
