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
        "--max-drop", "100",  # a loose budget, so that a ring smaller than the generated weights is kept
        "--set", "quantize.objective=size"],
    "odenet_basis": ["digits_odenet.pt2", "--pipeline", "basis"],
}

# the CPU the pins below were measured on (compressor.report.cpu.cpu_info)
PINNED_ON = {"cpu": "Intel(R) Xeon(R) Processor (x86_64)",
             "cpu_features": "avx2 avx512f avx512bw avx512_vnni avx_vnni amx_int8"}
PINS = {
    "mlp_shrink_prune_quantize": ("aa257ed74d8f68eae8fc0c5a18c1fb4be57d285bc244e81282757e369ba1db39",
                                  "6cdaba95ab8e8117c2d691e3fe8ca7036e6d46b2c95e25d932d474874b7ab96b"),
    "cnn_rpg_quantize": ("168ac333075eb222a498969c21cd85eb5fd40d198fca1771c2940bf21d7788fa",
                         "f02517a731eb66cfcfffa062815ec236a2c4cfc6261f62e78742025b9c828b67"),
    "odenet_basis": ("1938b46a32b90cc2a6dcdab11a6606a9d2514fe59200a74331b5b167df043834",
                     "7fd6b71450dbdc7d0d28aeafd5d543abef32b46b899c4a98bdf2dcb94bd94a79"),
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
