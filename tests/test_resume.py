"""kill -9 in the middle of a fine-tuning stage, then --resume: byte-identical to an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.conftest import HELDOUT, ROOT, SAMPLES, TRAIN, run_cli

ARGS = [str(SAMPLES / "digits_mlp.pt2"), "--pipeline", "shrink,prune,quantize", "--set", "shrink.epochs=3",
        "--set", "prune.target=0.85", "--set", "prune.epochs_per_step=3", "--data", str(HELDOUT),
        "--train-data", str(TRAIN), "--set", "quantize.objective=size", "--quiet"]  # bytes compared between runs


def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path):
    clean = tmp_path / "clean"
    res = run_cli(*ARGS, "--out", clean)
    assert res.code == 0, res
    assert not (clean / ".checkpoints").exists(), "checkpoints are removed after a successful run"

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "compressor.cli", *ARGS, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / ".checkpoints" / "stage-00-shrink" / "record.json").exists():
        assert proc.poll() is None, "the run ended before shrink was checkpointed"
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(1.0)  # well inside prune's fine-tuning
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.onnx").exists()

    res = run_cli(*ARGS, "--out", out)
    assert res.code == 1 and "--resume" in res.stderr  # a non-empty --out needs --resume
    res = run_cli(*ARGS[:-1], "--seed", "7", "--quiet", "--out", out, "--resume")
    assert res.code == 1 and "fingerprint mismatch" in res.stderr
    res = run_cli(*ARGS, "--out", out, "--resume")
    assert res.code == 0, res
    for name in ("model.onnx", "model.safetensors"):
        assert (out / name).read_bytes() == (clean / name).read_bytes(), name
    assert not (out / ".checkpoints").exists()
    assert not list(tmp_path.glob(".killed.tmp-*")), "the killed run's staging directory is cleaned up"


def test_keep_checkpoints_and_resume_of_a_finished_run(tmp_path):
    out = tmp_path / "o"
    args = [str(SAMPLES / "digits_mlp.pt2"), "--pipeline", "prune,quantize", "--set", "prune.target=0.3",
            "--set", "prune.epochs_per_step=1", "--data", str(HELDOUT), "--train-data", str(TRAIN), "--quiet",
            "--set", "quantize.objective=size"]
    res = run_cli(*args, "--out", out, "--keep-checkpoints")
    assert res.code == 0, res
    assert (out / ".checkpoints" / "stage-00-prune" / "weights.safetensors").is_file()
    first = (out / "model.safetensors").read_bytes()
    res = run_cli(*args, "--out", out, "--resume")
    assert res.code == 0, res
    assert (out / "model.safetensors").read_bytes() == first


def test_an_edited_arch_file_or_module_invalidates_checkpoints(tmp_path, monkeypatch):
    """A checkpoint's fingerprint covers the --arch code itself (a file path or a module found on the path), not
    only its name: a resumed run on an edited forward would mix two architectures."""
    from compressor.run.checkpoint import fingerprint
    from compressor.run.pipeline import RunOptions
    from compressor.run.plan import plan_stages

    monkeypatch.chdir(tmp_path)
    for spec, source in (("arch_file.py:make", tmp_path / "arch_file.py"), ("arch_mod:make", tmp_path / "arch_mod.py")):
        source.write_text("def make():\n    return None\n")
        options = RunOptions(model=SAMPLES / "digits_mlp.pt", pipeline=["prune"], data=HELDOUT, out=tmp_path / "o",
                             train_data=TRAIN, arch=spec)
        stages = plan_stages(options)
        before = fingerprint(options, stages)
        assert fingerprint(options, stages) == before
        source.write_text("def make():\n    return 1\n")
        assert fingerprint(options, stages) != before, spec
