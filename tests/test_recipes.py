"""Recipes: validated before anything runs (file, line, key, valid choices), --set overrides, resolved recipe."""
from __future__ import annotations

import pytest
import yaml

from tests.conftest import HELDOUT, ROOT, SAMPLES, TRAIN, read_report, run_cli

PT2 = SAMPLES / "digits_mlp.pt2"


def write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("body,needles", [
    ("stages:\n  - quantise\n", ["line 2", "unknown stage 'quantise'", "valid stages"]),
    ("stages:\n  - quantize:\n      modee: dynamic\n", ["line 3", "unknown option quantize.modee", "valid options"]),
    ("stages:\n  - quantize: {mode: int4}\n", ["line 2", "not one of auto, static, dynamic"]),
    ("stages:\n  - prune: {target: lots}\n  - quantize\n", ["line 2", "prune.target", "not a number"]),
    ("seed: 0\nstagez: []\n", ["line 2", "unknown key 'stagez'", "valid keys"]),
    ("data: {held: x.npz}\nstages: [quantize]\n", ["line 1", "unknown key 'held'", "heldout"]),
    ("stages: []\n", ["non-empty list"]),
    ("stages: [quantize, prune]\n", ["'prune' cannot run after 'quantize'"]),
    ("stages:\n  - quantize: {mode: [unclosed\n", ["not a valid recipe"]),
])
def test_recipe_mistakes_are_named(tmp_path, body, needles):
    recipe = write(tmp_path, body)
    res = run_cli(PT2, "--pipeline", recipe, "--data", HELDOUT, "--out", tmp_path / "o", "--quiet")
    assert res.code == 2, res
    assert str(recipe) in res.stderr or "cannot run after" in res.stderr
    for n in needles:
        assert n in res.stderr, (n, res.stderr)
    assert not (tmp_path / "o").exists()


def test_toml_recipe_and_set_override(tmp_path):
    recipe = write(tmp_path, '[[stages]]\n[stages.quantize]\nmode = "static"\n', "r.toml")
    out = tmp_path / "o"
    res = run_cli(PT2, "--pipeline", recipe, "--data", HELDOUT, "--out", out, "--quiet",
                  "--set", "quantize.mode=dynamic")
    assert res.code == 0, res
    resolved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert resolved["stages"][0]["quantize"]["mode"] == "dynamic"  # --set beats the recipe
    assert resolved["stages"][0]["quantize"]["calib_samples"] == 256  # defaults filled in


def test_resolved_recipe_reproduces_the_run_byte_for_byte(tmp_path):
    first = tmp_path / "a"
    res = run_cli(SAMPLES / "digits_mlp.pt2", "--pipeline", ROOT / "recipes" / "digits_mlp_sparse.yaml",
                  "--set", "shrink.epochs=1", "--set", "prune.target=0.5", "--out", first, "--quiet", cwd=ROOT)
    assert res.code == 0, res
    report = read_report(first)
    assert report["gate"]["gates"][1]["name"] == "min_recovery"  # gates from the recipe
    second = tmp_path / "b"
    res = run_cli(SAMPLES / "digits_mlp.pt2", "--pipeline", first / "recipe.yaml", "--out", second, "--quiet",
                  cwd=ROOT)
    assert res.code == 0, res
    for name in ("model.onnx", "model.safetensors", "recipe.yaml"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


@pytest.mark.parametrize("body,needle", [
    ("gates: {max_drop: lots}\nstages: [quantize]\n", "gates.max_drop: 'lots' is not a number"),
    ("gates: {max_drop: 101}\nstages: [quantize]\n", "max_drop must be >= 0 and <= 100 (got 101)"),
    ("confidence: 1.5\nstages: [quantize]\n", "confidence must be >= 0.5 and < 1"),
    ("time_limit: soon\nstages: [quantize]\n", "expected a positive duration"),
    ("gates: {floors: {accuracy: high}}\nstages: [quantize]\n", "floors must map"),
    ("device: tpu\nstages: [quantize]\n", "device must be"),
    ("data: {heldout: 5}\nstages: [quantize]\n", "data.heldout must be a file path"),
    ("seed: true\nstages: [quantize]\n", "seed: True is not an integer"),
    ("output_metrics: [emb]\nstages: [quantize]\n", "output_metrics must map output names"),
    ("output_metrics: {emb: accuracy}\nstages: [quantize]\n", "each output's metric must be one of agreement, cosine, mse"),
])
def test_recipe_run_settings_are_validated(tmp_path, body, needle):
    res = run_cli(PT2, "--pipeline", write(tmp_path, body), "--data", HELDOUT, "--out", tmp_path / "o", "--quiet")
    assert res.code == 2 and needle in res.stderr, res
