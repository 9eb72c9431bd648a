"""Same seed, same bytes whatever the machine's thread setting: the tool pins torch and ONNX Runtime threads."""
from __future__ import annotations

import os
import subprocess
import sys

import yaml

from tests.conftest import HELDOUT, ROOT, SAMPLES, TRAIN, read_report

ARGS = [str(SAMPLES / "digits_mlp.pt2"), "--pipeline", "shrink,prune,quantize", "--set", "shrink.epochs=2",
        "--set", "prune.schedule=0.5,0.7", "--set", "prune.epochs_per_step=1", "--set", "prune.codebook_epochs=1",
        "--data", str(HELDOUT), "--train-data", str(TRAIN), "--seed", "2", "--quiet",
        "--set", "quantize.objective=size"]  # bytes compared between runs: no choice by timing


def run(out, omp: str, *extra: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": omp, "MKL_NUM_THREADS": omp}
    proc = subprocess.run([sys.executable, "-m", "compressor.cli", *ARGS, *extra, "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 3), proc.stderr[-800:]


def test_same_bytes_at_omp_1_and_2_and_the_thread_count_is_recorded(tmp_path):
    run(tmp_path / "one", "1")
    run(tmp_path / "two", "2")
    for name in ("model.onnx", "model.safetensors"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert read_report(tmp_path / "two")["threads"] == 1
    assert yaml.safe_load((tmp_path / "two" / "recipe.yaml").read_text())["threads"] == 1
