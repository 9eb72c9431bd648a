"""The final confirmation (run/confirm.py): a slice of validation no stage decision sees judges model.onnx once at the
end, and a failing artifact steps back along the stages, not to nothing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from compressor.defaults import CONFIRM_MIN
from compressor.io.data import Dataset, load_dataset
from compressor.run.confirm import hold_back
from compressor.runtime.calls import onnx_predict, ort_session
from tests.conftest import HELDOUT, SAMPLES, TRAIN, VAL, read_report, run_cli


@pytest.fixture(scope="module")
def large_val(tmp_path_factory):
    """1,200 digits images (train and val pooled): large enough that 20% of it (240) is held back."""
    path = tmp_path_factory.mktemp("val") / "val.npz"
    tr, va = np.load(TRAIN), np.load(VAL)
    np.savez(path, x=np.concatenate([va["x"], tr["x"]])[:1200], y=np.concatenate([va["y"], tr["y"]])[:1200])
    return path


def test_hold_back_is_seeded_disjoint_and_only_when_large_enough():
    data = Dataset({"x": torch.arange(1200.0)[:, None]}, None, "v")
    a, c = hold_back(data, 0.2, 7)
    a2, c2 = hold_back(data, 0.2, 7)
    seen, held = set(a.inputs["x"][:, 0].tolist()), set(c.inputs["x"][:, 0].tolist())
    assert len(held) == 240 and len(seen) == 960 and not seen & held
    assert torch.equal(c.inputs["x"], c2.inputs["x"]) and not torch.equal(c.inputs["x"], hold_back(data, 0.2, 8)[1]
                                                                          .inputs["x"])
    small = Dataset({"x": torch.zeros(CONFIRM_MIN * 5 - 1, 1)}, None, "s")
    assert hold_back(small, 0.2, 0) == (small, None) and hold_back(data, 0.0, 0) == (data, None)


def test_an_artifact_that_fails_its_confirmation_steps_back_to_what_holds(tmp_path, large_val):
    """A ring kept whatever it costs (rpg.grow=false, 1% of the weights, no fine-tune) loses most predictions: the
    confirmation rejects rpg,quantize, then rpg (restored from its checkpoint), and ships the original's export."""
    out = tmp_path / "o"
    res = run_cli(SAMPLES / "digits_mlp.pt2", "--pipeline", "rpg,quantize", "--data", HELDOUT, "--train-data", TRAIN,
                  "--val-data", large_val, "--set", "rpg.grow=false", "--set", "rpg.ring_fraction=0.01",
                  "--set", "rpg.epochs=0", "--out", out)
    assert res.code == 0, res
    report = read_report(out)
    confirmation = report["confirmation"]
    assert confirmation["stepped_back_from"] == [["rpg", "quantize"], ["rpg"]]
    assert confirmation["pipeline"] == [] and confirmation["accepted"] and confirmation["n"] == 240
    assert report["pipeline"] == [] and report["stages"] == []  # what shipped; the plan as asked is in recipe.yaml
    assert report["artifacts"][0]["metric_value"] == pytest.approx(report["baseline"]["value"])
    note = next(n for n in report["notes"] if "final confirmation" in n)
    assert note.startswith("WARNING: ") and "rpg,quantize: drop" in note and "shipped the original model" in note
    assert "stepping back to rpg" in res.stderr and not (out / ".checkpoints").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["accuracy_vs_size.png", "latency.png", "model.onnx", "model.safetensors", "recipe.yaml", "report.json",
         "report.md"])  # nothing of the rejected tries (no ring structure, no sparsity plot) stays
    # the resolved recipe is the pipeline as asked: rerun, it steps back the same way to the same bytes
    again = run_cli(SAMPLES / "digits_mlp.pt2", "--pipeline", out / "recipe.yaml", "--out", tmp_path / "again",
                    "--quiet")
    assert again.code == 0, again
    assert (tmp_path / "again" / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()
    assert read_report(tmp_path / "again")["confirmation"]["stepped_back_from"] == [["rpg", "quantize"], ["rpg"]]


def test_a_confirmed_artifact_ships_and_the_stages_never_saw_the_slice(tmp_path, large_val):
    """The confirmation's drop is model.onnx's against the original as loaded (a quantize-only run rounds the
    working model's weights in place: the reference is taken before), recomputed here from the files."""
    out = tmp_path / "o"
    res = run_cli(SAMPLES / "digits_mlp.pt2", "--pipeline", "quantize", "--data", HELDOUT, "--train-data", TRAIN,
                  "--val-data", large_val, "--out", out, "--quiet", "--set", "quantize.mode=dynamic", "--metric", "mse")
    assert res.code == 0, res
    report = read_report(out)
    _, held = hold_back(load_dataset(large_val, ["x"]), 0.2, 0)
    original = torch.export.load(str(SAMPLES / "digits_mlp.pt2")).module()
    with torch.no_grad():
        reference = original(held.inputs["x"]).double()
    onnx = onnx_predict(ort_session(out / "model.onnx"), held).double()
    rise = float(((onnx - reference) ** 2).mean(1).mean())  # mse's drop is its rise, in the output's units squared
    assert rise > 0 and report["confirmation"]["drop"] == pytest.approx(rise, rel=1e-6)
    assert report["confirmation"]["accepted"] and report["confirmation"]["pipeline"] == ["quantize"]
    assert report["confirmation"]["stepped_back_from"] == []
    assert "on 960 validation samples" in " ".join(report["stages"][0]["notes"])  # the stages' share only
    assert any(n.startswith("final confirmation of model.onnx on 240 validation samples") for n in report["notes"])


@pytest.mark.parametrize("confirm, says", [("0", "final confirmation off"),
                                           ("0.2", "20% of 450 validation samples is fewer than 200")])
def test_no_slice_below_the_minimum_or_when_off(tmp_path, confirm, says):
    out = tmp_path / "o"
    res = run_cli(SAMPLES / "digits_mlp.pt2", "--pipeline", "quantize", "--data", HELDOUT, "--train-data", TRAIN,
                  "--val-data", VAL, "--out", out, "--quiet", "--confirm", confirm)
    assert res.code == 0, res
    report = read_report(out)
    assert report["confirmation"] is None and any(says in n for n in report["notes"])
    assert run_cli(SAMPLES / "digits_mlp.pt2", "--data", HELDOUT, "--out", tmp_path / "bad", "--confirm", "1").code == 2


def test_the_step_back_never_tries_the_same_state_twice(monkeypatch, tmp_path):
    """A stage that kept its input (outcome `input`) made the state of the pipeline without it: stepping back past
    the stage after it goes straight on to the one before (a second look at a state that already failed is none)."""
    from types import SimpleNamespace

    from compressor.run import runner
    from compressor.run.pipeline import RunOptions

    calls = []

    def fake_run(options, stages, out, reporter, ckpt, back):
        names = [s.name for s in stages]
        calls.append(names)
        kept = {"prune": "input"}
        return {"stages": [{"name": n, "outcome": {"kept": kept.get(n, "compressed")}} for n in names],
                "confirmation": {"accepted": names == [], "pipeline": names}}

    monkeypatch.setattr(runner, "_run", fake_run)
    stages = [SimpleNamespace(name=n, export_time=n == "quantize") for n in ("prune", "rpg", "quantize")]
    options = RunOptions(model=tmp_path / "m.pt2", pipeline=["prune", "rpg", "quantize"], data=tmp_path / "d.npz",
                         out=tmp_path / "o")
    report = runner._confirmed_run(options, stages, SimpleNamespace(clear=lambda: None),
                                   SimpleNamespace(log=lambda message: None), None)
    assert calls == [["prune", "rpg", "quantize"], ["prune", "rpg"], []] and report["confirmation"]["accepted"]
