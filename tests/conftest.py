"""Shared fixtures: the sample models and data, and a CLI runner that captures exit code and stderr."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
HELDOUT = SAMPLES / "digits_heldout.npz"
TRAIN = SAMPLES / "digits_train.npz"
VAL = SAMPLES / "digits_val.npz"

torch.set_num_threads(2)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class Result:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code, self.stdout, self.stderr = code, stdout, stderr

    def __repr__(self) -> str:
        return f"Result(code={self.code}, stdout={self.stdout[-800:]!r}, stderr={self.stderr[-800:]!r})"


def run_cli(*args: str | Path, cwd: Path | None = None) -> Result:
    """Invoke the `compress` app in-process (exceptions escaping the CLI fail the test)."""
    from compressor.cli import app

    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    finally:
        os.chdir(old)
    return Result(result.exit_code, result.stdout, result.stderr)


def read_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="session")
def cnn_quantized(tmp_path_factory) -> Path:
    """digits_cnn.pt2 through the quantize pipeline (shared by several tests), objective=size: int8 whatever the
    CPU's speed (the default, balanced, may keep the float graph where int8 runs slower: test_quantize_objective)."""
    out = tmp_path_factory.mktemp("cnn") / "out"
    res = run_cli(SAMPLES / "digits_cnn.pt2", "--pipeline", "quantize", "--data", HELDOUT, "--train-data", TRAIN,
                  "--out", out, "--set", "quantize.objective=size")
    assert res.code == 0, res
    return out
