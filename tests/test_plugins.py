"""Plugins: the example plugin package is pip-installed and run through `compress`; a broken plugin is isolated."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import HELDOUT, ROOT, SAMPLES, VAL

PLUGIN = ROOT / "plugins" / "compressor-npz"


def compress(*args, pythonpath: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(pythonpath), str(ROOT)])}
    return subprocess.run([sys.executable, "-m", "compressor.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("src") / PLUGIN.name  # build a copy: pip writes build/ into the source tree
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--target", str(target), str(source)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    return target


def test_plugin_loader_and_metric_run_through_compress(installed_plugin, tmp_path):
    state = torch.load(SAMPLES / "digits_mlp.pt", weights_only=True)
    weights = tmp_path / "mlp.weights.npz"
    np.savez(weights, **{k.replace(".", "/"): v.numpy() for k, v in state.items()})
    out = tmp_path / "o"
    res = compress(weights, "--arch", "sample_models.digits_models:mlp", "--set", "quantize.mode=dynamic",
                   "--data", HELDOUT, "--out", out, "--floor", "top3_accuracy=99", "--quiet",
                   pythonpath=installed_plugin)
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["baseline"]["value"] > 95
    assert report["artifacts"][0]["metric_extra"]["top3_accuracy"] >= 99
    assert any(g["name"] == "floor:top3_accuracy" and g["passed"] for g in report["gate"]["gates"])
    # the plugin as the run's metric: its decisions have no per-sample bound, and the report says so
    out = tmp_path / "m"
    res = compress(weights, "--arch", "sample_models.digits_models:mlp", "--set", "quantize.mode=dynamic",
                   "--data", HELDOUT, "--val-data", VAL, "--metric", "top3_accuracy", "--out", out, "--quiet",
                   pythonpath=installed_plugin)
    assert res.returncode == 0, res.stderr
    notes = json.loads((out / "report.json").read_text())["notes"]
    assert any(n.startswith("WARNING: top3_accuracy (a plugin metric) has no per-sample scores") for n in notes)


def test_broken_plugin_is_named_and_builtins_still_work(tmp_path):
    site = tmp_path / "site"
    dist = site / "broken_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[compressor.stages]\nexploding = broken_plugin_mod:Stage\n\n[compressor.metrics]\nbad = no_such_module:f\n")
    (site / "broken_plugin_mod.py").write_text("raise RuntimeError('boom at import')\n")
    res = compress("stages", pythonpath=site)
    assert res.returncode == 0, res.stderr
    assert "exploding" in res.stderr and "boom at import" in res.stderr and "'bad'" in res.stderr
    assert "quantize.mode" in res.stdout and "prune.policy" in res.stdout
    out = tmp_path / "o"
    res = compress(SAMPLES / "digits_mlp.pt2", "--set", "quantize.mode=dynamic", "--data", HELDOUT, "--out", out,
                   "--quiet", pythonpath=site)
    assert res.returncode == 0, res.stderr
    assert (out / "model.onnx").is_file()
