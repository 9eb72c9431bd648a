"""Same seed, same bytes: sha256 of model.onnx and model.safetensors for three short runs.

The same seed and threads give the same bytes on one machine, but not across CPUs: oneDNN's and ONNX Runtime's
float32 convolutions pick their kernels by CPU features, so a fine-tuned conv net's weights differ in the last
bits from one CPU to another. So the digests are pinned for the CPU they were measured on (`PINNED_ON`: the model
and the int8-relevant features report.json records), where a refactor must not change them; on any other CPU each
run is made twice and the two must be byte-identical. Each run is a fresh `compress` process; the tool pins its own
threads (--threads, default 1), and the environment pins OMP too. A change of behaviour (a stage's decision rule)
re-pins them on the machine that makes it, and its commit says why.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from compressor.report.cpu import cpu_info
from tests.conftest import HELDOUT, SAMPLES, TRAIN

RUNS = {
    "mlp_shrink_prune_quantize": [
        "digits_mlp.pt2", "--pipeline", "shrink,prune,quantize", "--train-data", str(TRAIN), "--seed", "3",
        "--set", "shrink.epochs=1", "--set", "prune.schedule=0.5,0.8", "--set", "prune.epochs_per_step=1",
        "--set", "prune.codebook_epochs=1", "--set", "quantize.objective=size"],
    "cnn_rpg_quantize": [
        "digits_cnn.pt2", "--pipeline", "rpg,quantize", "--train-data", str(TRAIN),
        "--set", "rpg.epochs=1", "--set", "rpg.max_steps_per_epoch=5", "--set", "rpg.max_drop=40",
        "--max-drop", "100",  # a loose budget, so that a ring (84% of the generated weights) is kept
        "--set", "quantize.objective=size"],
    "odenet_basis": ["digits_odenet.pt2", "--pipeline", "basis"],
}

# the CPU the pins below were measured on (compressor.report.cpu.cpu_info)
PINNED_ON = {"cpu": "Intel(R) Xeon(R) Processor (x86_64)",
             "cpu_features": "avx2 avx512f avx512bw avx512_vnni avx_vnni amx_int8"}
PINS = {
    "mlp_shrink_prune_quantize": ("666667dec18a630352f27b55ecc2aaf395b81ebd4bf5b5dd18ccde2616e0c34e",
                                 "72b78d4c400ddaf7aa19d02144898f86871df9503c9d07946402a579cc3a9214"),
    "cnn_rpg_quantize": ("62d937e1dffa8f769c5eab92c4d29068a9e7d6a3b098c1f7ea7b43d718642b8d",
                        "130f64be513e9eee09fae10edc6571088e46d30c8a6d44116db10f86f597c543"),
    "odenet_basis": ("0fccc632428b8e0f918073c79a8141f38561b1ce0f0cb43441106fac7f50585c",
                    "560d5c28fc7c1965f842db45562a4a14409017e4950098834c0372c4234c9318"),
}

ONE_THREAD = ("import sys, torch; torch.set_num_threads(1); torch.set_num_interop_threads(1); "
              "from compressor.cli import entrypoint; sys.argv[0] = 'compress'; entrypoint()")


def fixed_copy(model: Path) -> Path:
    """model.safetensors records the source model's absolute path (load() rebuilds from it): run from one fixed
    path so that the digests do not depend on where the repository is checked out."""
    target = Path(tempfile.gettempdir()) / "compressor-digest-inputs" / model.name
    if not target.is_file() or target.read_bytes() != model.read_bytes():
        target.parent.mkdir(exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}")
        shutil.copyfile(model, tmp)
        tmp.replace(target)
    return target


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def digests(name: str, out) -> tuple[str, str]:
    """One fresh `compress` process of the named run; the sha256 of model.onnx and model.safetensors."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", ONE_THREAD, str(fixed_copy(SAMPLES / RUNS[name][0])), *RUNS[name][1:], "--data",
           str(HELDOUT), "--out", str(out), "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 3), proc.stderr[-2000:]  # 3: a gate failed; the artifacts are still written
    return sha256(out / "model.onnx"), sha256(out / "model.safetensors")


@pytest.mark.parametrize("name", sorted(RUNS))
def test_same_seed_same_bytes(name, tmp_path):
    first = digests(name, tmp_path / "out")
    if cpu_info() == PINNED_ON:
        assert first == PINS[name]
    else:  # another CPU computes other float bits: the same bytes twice on it
        assert digests(name, tmp_path / "again") == first
