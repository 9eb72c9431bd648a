"""Data-parallel fine-tuning under torchrun (gloo, CPU): two processes through shrink,prune of a conv net with batch
norm give one result, the same on both ranks and the same bytes run after run, through `torchrun` itself, the
`--nproc` shortcut and `--resume`."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings

from tests.conftest import HELDOUT, ROOT, SAMPLES, TRAIN

ARGS = [str(SAMPLES / "digits_cnn.pt2"), "--pipeline", "shrink,prune", "--data", str(HELDOUT), "--train-data",
        str(TRAIN), "--set", "shrink.epochs=2", "--set", "prune.epochs_per_step=1", "--set", "prune.codebook=off",
        "--set", "prune.target=0.5", "--quiet"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "GLOO_SOCKET_IFNAME": "lo",  # one machine: loopback
       "PYTHONFAULTHANDLER": "1"}  # a rank that crashes prints where it was


def _run(*cmd: str) -> subprocess.CompletedProcess:
    """The command's result; run once more when a rank was killed by a signal (gloo's TCP transport can abort a
    process from its own I/O thread on a loaded machine, outside any code of ours). A second crash fails the test,
    with both runs' error lines."""
    res = _once(*cmd)
    if res.returncode != 0 and re.search(r"exitcode\s*:\s*-\d+", res.stderr):
        first = _why(res)
        warnings.warn(f"a rank died by a signal; running once more. First run:\n{first}")
        res = _once(*cmd)
        res.stderr = f"{first}\n--- second run ---\n{res.stderr}"
    return res


def _once(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *cmd], env=ENV, capture_output=True, text=True, timeout=600)


def _why(res: subprocess.CompletedProcess) -> str:
    """What a failed launch printed that says why: every rank's error lines (torchrun's own summary, which ends
    stderr, names only exit codes), then the tail."""
    lines = res.stderr.splitlines()
    causes = [line for line in lines if re.search(r"terminate|what\(\)|Error|error:|Traceback|Abort|Fatal|File \"", line)]
    return "\n".join(causes[:40] + ["..."] + lines[-15:])


def test_two_ranks_under_torchrun_agree_and_reproduce(tmp_path):
    a, b = tmp_path / "torchrun", tmp_path / "nproc"
    res = _run("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "compressor", *ARGS,
               "--out", str(a))
    assert res.returncode == 0, _why(res)
    res = _run("-m", "compressor", *ARGS, "--out", str(b), "--nproc", "2", "--keep-checkpoints")
    assert res.returncode == 0, _why(res)
    for out in (a, b):
        report = json.loads((out / "report.json").read_text())
        parallel = report["parallel"]
        assert parallel["world_size"] == 2 and parallel["backend"] == "gloo", parallel
        digests = parallel["state_digests"]
        assert len(digests) == 2 and digests[0] == digests[1], digests  # same weights and masks on both ranks
        assert report["gate"]["passed"], report["gate"]
        assert report["stages"][1]["sparsity"] >= 0.3, report["stages"][1]
    for name in ("model.onnx", "model.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    first = (b / "model.safetensors").read_bytes()
    res = _run("-m", "compressor", *ARGS, "--out", str(b), "--nproc", "2", "--resume")  # both ranks restore
    assert res.returncode == 0, _why(res)
    assert (b / "model.safetensors").read_bytes() == first


def test_nproc_returns_rank_zeros_gate_exit_code(tmp_path):
    res = _run("-m", "compressor", *ARGS, "--out", str(tmp_path / "o"), "--nproc", "2", "--set", "prune.target=0.9",
               "--set", "prune.patience=0", "--max-drop", "0.01", "--floor", "accuracy=99.9")
    assert res.returncode == 3, (res.returncode, _why(res))
    assert "FAIL" in res.stdout


def test_a_signal_to_the_launcher_exits_with_the_shells_code(monkeypatch):
    """Ctrl-C or SIGTERM under --nproc ends with 130 / 143, as a one-process run does (it was an 'unexpected'
    SignalException, exit 1)."""
    import signal

    import torch.distributed.launcher.api as api
    from torch.distributed.elastic.multiprocessing.api import SignalException

    from compressor.run.launch import launch

    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        def signalled(config, entry, sig=sig):
            def run(*args):
                raise SignalException(f"Process 1 got signal: {int(sig)}", sigval=sig)
            return run
        monkeypatch.setattr(api, "elastic_launch", signalled)
        assert launch(2, ["model.pt2"]) == code


def test_a_usage_error_under_nproc_is_said_once(tmp_path):
    """A usage error is the same on every rank: rank 0 says it, in one line, and the command exits 2."""
    res = _run("-m", "compressor", *ARGS, "--out", str(tmp_path / "o"), "--nproc", "2", "--set", "prune.nosuch=1")
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.returncode == 2, (res.returncode, _why(res))
    assert len(errors) == 1 and "nosuch" in errors[0], res.stderr
