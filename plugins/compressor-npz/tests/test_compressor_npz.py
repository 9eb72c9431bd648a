"""The plugin's own tests (importable without installing: the package directory is put on sys.path)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compressor_npz import NpzWeightsLoader, top3_accuracy  # noqa: E402


def test_loader_reads_torch_and_flax_style_names(tmp_path):
    path = tmp_path / "m.weights.npz"
    np.savez(path, **{"fc1/weight": np.ones((3, 2), np.float32), "fc1.bias": np.zeros(3, np.float32)})
    state = NpzWeightsLoader.load(path)
    assert set(state) == {"fc1.weight", "fc1.bias"} and state["fc1.weight"].shape == (3, 2)


def test_top3_accuracy():
    out = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]])
    assert top3_accuracy(out, torch.tensor([0, 0]), None) == 50.0
    assert top3_accuracy(out, None, None) is None
