"""compressor plugin: a loader for `.npz` weight files and a top-3 accuracy metric.

Weights exported from NumPy or JAX often come as an `.npz` of arrays named like a PyTorch state_dict
(`fc1.weight`, ...), or with `/` as separator (Flax-style `fc1/weight`). The core does not read them as models;
this loader turns them into a state_dict that compressor builds into `--arch` like any other.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class NpzWeightsLoader:
    """Entry point `compressor.loaders`: `.npz` of named weight arrays -> state_dict."""

    suffixes = (".weights.npz",)

    @staticmethod
    def load(path: Path) -> dict[str, torch.Tensor]:
        with np.load(path, allow_pickle=False) as npz:
            if not npz.files:
                raise ValueError("the archive holds no arrays")
            return {k.replace("/", "."): torch.from_numpy(np.ascontiguousarray(npz[k])) for k in npz.files}


def top3_accuracy(outputs: torch.Tensor, labels: torch.Tensor | None, reference: torch.Tensor | None):
    """Entry point `compressor.metrics`: percent of samples whose label is among the 3 highest outputs."""
    if labels is None or outputs.ndim != 2 or outputs.shape[1] < 3:
        return None
    top3 = outputs.topk(3, dim=1).indices
    return float((top3 == labels.unsqueeze(1)).any(1).float().mean()) * 100.0
