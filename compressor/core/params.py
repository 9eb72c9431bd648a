"""The one parameter counter: unique parameters (a tied tensor counts once) and their non-zeros."""
from __future__ import annotations

import torch
from torch import nn


def unique_param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields each shared tensor once


def count_params(model: nn.Module) -> tuple[int, int]:
    """(unique parameters, non-zero parameters)."""
    total = nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int(torch.count_nonzero(p.detach()))
    return total, nonzero
