"""CI step: every gate fails with exit code 3 and its name in report.md; `compress diff` compares two runs."""
from __future__ import annotations

import json

import pytest

from tests.conftest import HELDOUT, SAMPLES, TRAIN, read_report, run_cli

PT2 = SAMPLES / "digits_mlp.pt2"
BASE = (PT2, "--set", "quantize.mode=dynamic", "--data", HELDOUT, "--quiet")


@pytest.fixture(scope="module")
def passing_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ci") / "ok"
    res = run_cli(*BASE, "--out", out, "--min-recovery", "0.99", "--max-bytes", "10000000",
                  "--floor", "accuracy=90", "--floor", "cosine_min=0.9")
    assert res.code == 0, res
    return out


# a run that really loses accuracy (an RPG ring barely trained): the drop gates fail with in-range limits
# (out-of-range limits such as --max-drop -0.5 are usage errors, exit 2)
LOSSY = (SAMPLES / "digits_cnn.pt2", "--pipeline", "rpg", "--set", "rpg.epochs=1", "--set", "rpg.max_steps_per_epoch=5",
         "--set", "rpg.grow=false",  # the ring is kept whatever it costs: the gate must see the loss
         "--train-data", TRAIN, "--data", HELDOUT, "--quiet")


@pytest.mark.parametrize("base,args,name", [
    (LOSSY, (), "max_drop"),
    (LOSSY, ("--max-drop", "100", "--min-recovery", "0.99"), "min_recovery"),
    (BASE, ("--max-bytes", "1000"), "max_bytes"),
    (BASE, ("--floor", "accuracy=99.5"), "floor:accuracy"),
    (BASE, ("--floor", "cosine_min=1.0"), "floor:cosine_min"),
])
def test_each_gate_fails_with_exit_3_and_is_named(tmp_path, base, args, name):
    out = tmp_path / "o"
    res = run_cli(*base, "--out", out, *args)
    assert res.code == 3, res
    assert name in res.stdout
    report = read_report(out)
    assert report["gate"]["failed"] == [name] and report["gate"]["passed"] is False
    md = (out / "report.md").read_text()
    assert f"Failed gates: {name}" in md and "**NO**" in md


def test_passing_gates_and_plot(passing_run):
    report = read_report(passing_run)
    assert [g["name"] for g in report["gate"]["gates"]] == [
        "max_drop", "min_recovery", "max_bytes", "floor:accuracy", "floor:cosine_min"]
    assert all(g["passed"] for g in report["gate"]["gates"])
    assert (passing_run / "accuracy_vs_size.png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_floor_metric_is_a_usage_error(tmp_path):
    res = run_cli(*BASE, "--out", tmp_path / "o", "--floor", "f1=0.5")
    assert res.code == 2 and "unknown metric" in res.stderr
    assert not (tmp_path / "o").exists()


def test_diff_compares_two_runs(passing_run, tmp_path):
    out = tmp_path / "b"
    assert run_cli(*BASE, "--out", out, "--set", "quantize.per_channel=false").code == 0
    res = run_cli("diff", passing_run / "report.json", out / "report.json", "--markdown")
    assert res.code == 0, res
    assert "| model.onnx bytes |" in res.stdout and "| final metric % |" in res.stdout
    res = run_cli("diff", passing_run / "report.json", tmp_path / "missing.json")
    assert res.code == 1 and "report not found" in res.stderr
    # the same model: no warning; the latency compared as each run's ratio to its own fp32 timing
    res = run_cli("diff", passing_run / "report.json", out / "report.json", "--markdown")
    assert "different source models" not in res.stdout
    assert "| model.onnx ORT ms / its run's fp32 ms (range of the p10-p90s) |" in res.stdout
    assert "model.safetensors ORT ms" not in res.stdout and " - |" not in res.stdout
    other = json.loads((out / "report.json").read_text())
    other["model"]["sha256"] = "0" * 64
    (tmp_path / "other.json").write_text(json.dumps(other))
    res = run_cli("diff", passing_run / "report.json", tmp_path / "other.json", "--markdown")
    assert res.code == 2 and "different source models" in res.stderr and res.stdout == ""
    res = run_cli("diff", passing_run / "report.json", tmp_path / "other.json", "--allow-different-models")
    assert res.code == 0 and "different source models" in res.stderr


def test_the_batch_norm_note_only_where_there_is_batch_norm(passing_run, cnn_quantized):
    note = "batch-norm statistics stay frozen"
    assert not any(note in n for n in read_report(passing_run)["notes"])  # an MLP: no batch norm
    assert any(note in n for n in read_report(cnn_quantized)["notes"])


def test_a_held_out_set_too_small_for_the_gate_is_named(tmp_path):
    """50 held-out samples: one changed prediction is 2 points, over the 1-point gate; the report says so."""
    import numpy as np

    held = np.load(HELDOUT)
    small = tmp_path / "held50.npz"
    np.savez(small, x=held["x"][:50], y=held["y"][:50])
    res = run_cli(SAMPLES / "digits_mlp.pt2", "--data", small, "--out", tmp_path / "o", "--quiet",
                  "--set", "quantize.mode=dynamic")
    assert res.code in (0, 3), res
    notes = read_report(tmp_path / "o")["notes"]
    assert any(n.startswith("WARNING: one held-out sample is 2.00 points of accuracy on 50 samples") for n in notes)
    big = run_cli(SAMPLES / "digits_mlp.pt2", "--data", HELDOUT, "--out", tmp_path / "b", "--quiet",
                  "--set", "quantize.mode=dynamic")
    assert big.code == 0 and not any("one held-out sample" in n for n in read_report(tmp_path / "b")["notes"])
