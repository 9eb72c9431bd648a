"""quantize judged in the run's metric (algorithms/quantize/judged.py): a model whose class scores are nearly tied
around a shared offset keeps a cosine of 1.0000 to the float graph under static int8 while its argmax flips on every
sample. auto's cosine check cannot see that; the judgement on validation can, and auto falls back to a safer form."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import SAMPLES, read_report, run_cli


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    """A depthwise-separable CNN (random init) whose logits are 5 + small differences; labels are its own argmax."""
    root = tmp_path_factory.mktemp("tied")
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6(),
                          nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU6(),
                          nn.Conv2d(16, 32, 1), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(32, 10)).eval()
    with torch.no_grad():
        model[-1].weight.mul_(0.05)
        model[-1].bias.fill_(5.0)
    for name in ("train", "val", "heldout"):
        x = np.load(SAMPLES / f"digits_{name}.npz")["x"]
        np.savez(root / f"{name}.npz", x=x, y=model(torch.from_numpy(x)).argmax(1).numpy())
    program = torch.export.export(model, (torch.zeros(4, 1, 8, 8),), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    torch.export.save(program, str(root / "tied.pt2"))
    return root


def _run(root, out, *sets):
    return run_cli(root / "tied.pt2", "--data", root / "heldout.npz", "--train-data", root / "train.npz",
                   "--val-data", root / "val.npz", "--out", out, "--quiet", *(a for s in sets for a in ("--set", s)))


def test_auto_falls_back_when_its_choice_fails_the_runs_metric(tied, tmp_path):
    res = _run(tied, tmp_path / "o", "quantize.objective=size")
    assert res.code == 0, res
    report = read_report(tmp_path / "o")
    notes = report["stages"][0]["notes"]
    assert any(n.startswith("auto: static QDQ on every op kept: cosine to float min 1.0000") for n in notes), notes
    assert any(n.startswith("auto's static choice held the cosine check but not the run's metric") for n in notes)
    assert any(n.startswith("shipped int8 weight-only (float activations) instead") for n in notes), notes
    assert report["stages"][0]["outcome"]["kept"] == "weight_only"
    assert report["artifacts"][0]["metric_value"] == report["baseline"]["value"]


def test_a_forced_form_is_kept_with_a_warning_and_the_gate_fails(tied, tmp_path):
    res = _run(tied, tmp_path / "o", "quantize.mode=static")
    assert res.code == 3, res
    notes = read_report(tmp_path / "o")["stages"][0]["notes"]
    assert any(n.startswith("WARNING: the forced static form is over quantize's budget in the run's metric")
               for n in notes), notes
