"""quantize judged in the run's metric (algorithms/quantize/judged.py): a model whose class scores are nearly tied
around a shared offset keeps a cosine of 1.0000 to the float graph under static int8 while its argmax flips on every
sample. auto's cosine check cannot see that; the judgement on validation can, and auto falls back to a safer form."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch import nn

from compressor.algorithms.quantize.config import QuantizeConfig
from compressor.algorithms.quantize.judged import judge_in_metric
from compressor.algorithms.quantize.stage import quantize_onnx
from compressor.export.torch_onnx import export_onnx_proto
from compressor.io.data import load_dataset
from compressor.io.load import load_model
from compressor.io.onnx_files import save_onnx
from compressor.judge.budget import BudgetDecision
from tests.conftest import SAMPLES, VAL, read_report, run_cli


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
    assert any(n.startswith("auto's static int8 choice held the cosine check but not the run's metric") for n in notes)
    assert any(n.startswith("shipped int8 weight-only (float activations) instead") for n in notes), notes
    outcome = report["stages"][0]["outcome"]
    assert (outcome["kept"], outcome["stop"], outcome["bound"], outcome["budget"]) == ("weight_only", "run_metric",
                                                                                        0.0, 1.0), outcome
    assert report["stages"][0]["decision"].startswith("int8 weight-only shipped: auto's static int8 choice failed")
    assert report["artifacts"][0]["metric_value"] == report["baseline"]["value"]
    assert sorted(p.name for p in (tmp_path / "o").glob("*.onnx")) == ["model.onnx"]  # no candidate left behind


def test_when_every_int8_form_fails_the_graph_quantize_was_given_ships(tmp_path):
    """judge_in_metric on a dynamic int8 digits_cnn with a judge that rejects every form: the weight-only fallback
    is tried and rejected, then the float graph is copied into place, named in the headline; a fallback that
    cannot be built is a note, not a failed run."""
    loaded = load_model(SAMPLES / "digits_cnn.pt2")
    val = load_dataset(VAL, loaded.input_names, loaded.input_dtypes)
    fp32, dst = tmp_path / "fp32.onnx", tmp_path / "model.onnx"
    save_onnx(export_onnx_proto(loaded.module, val.example()), fp32)
    quantize_onnx(fp32, dst, QuantizeConfig(mode="dynamic"), None, 0)
    judged_forms = []

    def reject(outputs):
        judged_forms.append(outputs.shape)
        return BudgetDecision(accepted=False, drop=5.0, bound=6.0, budget=1.0, confidence=0.75, n=len(val))

    def weight_only(path):
        shutil.copyfile(dst, path)
        return True

    judged = judge_in_metric(dst, fp32, val, reject, True, weight_only, tmp_path)
    assert len(judged_forms) == 2 and dst.read_bytes() == fp32.read_bytes()
    assert judged.headline.startswith("the float graph shipped: auto's int8 forms fail") and judged.decision.bound == 6.0
    assert any(n.startswith("int8 weight-only rejected too") for n in judged.notes), judged.notes
    quantize_onnx(fp32, dst, QuantizeConfig(mode="dynamic"), None, 0)

    def broken(path):
        raise RuntimeError("no kernel")

    judged = judge_in_metric(dst, fp32, val, reject, True, broken, tmp_path)
    assert dst.read_bytes() == fp32.read_bytes() and any("could not be tried" in n for n in judged.notes)


def test_a_forced_form_is_kept_with_a_warning_and_the_gate_fails(tied, tmp_path):
    res = _run(tied, tmp_path / "o", "quantize.mode=static")
    assert res.code == 3, res
    stage = read_report(tmp_path / "o")["stages"][0]
    assert stage["decision"].startswith("WARNING: the forced static int8 form is over quantize's budget in the "
                                        "run's metric"), stage["decision"]  # the terminal's summary line says it
