"""Same seed, same bytes: pinned sha256 of model.onnx and model.safetensors for three short runs.

Refactors must not change these digests (model.safetensors hashed with the source's absolute path reduced to its
file name, so that the digest does not depend on where the repository is checked out). Each run is a fresh `compress` process with one thread (OMP and torch):
the same seed at another thread count gives other bytes (a known, separate issue), so the threads are pinned.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import HELDOUT, SAMPLES, TRAIN

RUNS = {
    "mlp_shrink_prune_quantize": (
        ["digits_mlp.pt2", "--pipeline", "shrink,prune,quantize", "--train-data", str(TRAIN), "--seed", "3",
         "--set", "shrink.epochs=1", "--set", "prune.schedule=0.5,0.8", "--set", "prune.epochs_per_step=1",
         "--set", "prune.codebook_epochs=1"],
        "0eae88ed9144efd1adc6d8da9d63b51ca159555cfeafe512e0555b91e80ffb1d",
        "b680000baaff00b6539b8e5543189362b3a1816da7989990642b0999d235ffef"),
    "cnn_rpg_quantize": (
        ["digits_cnn.pt2", "--pipeline", "rpg,quantize", "--train-data", str(TRAIN),
         "--set", "rpg.epochs=1", "--set", "rpg.max_steps_per_epoch=5"],
        "a8b365b4054f4428c20015f393193fa0cf54ddf5798a14e10d1649f229f634d7",
        "3b440a168c5f1255c84a8eae7847a22dbb9c5f82520b19eafb04408457cc405c"),
    "odenet_basis": (
        ["digits_odenet.pt2", "--pipeline", "basis"],
        "0fccc632428b8e0f918073c79a8141f38561b1ce0f0cb43441106fac7f50585c",
        "4711c5045e0f5495e57bee34bbc496d36b6e5aac7eabad3610c769471461ee2e"),
}

ONE_THREAD = ("import sys, torch; torch.set_num_threads(1); torch.set_num_interop_threads(1); "
              "from compressor.cli import entrypoint; sys.argv[0] = 'compress'; entrypoint()")


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def weights_sha256(path) -> str:
    """sha256 of model.safetensors with the one location-dependent field (the source model's absolute path, kept
    so that `compressor.load` finds it) blanked: the digest then holds in any checkout."""
    from safetensors import safe_open
    from safetensors.torch import save

    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    header = json.loads(meta["compressor"])
    header["source"]["path"] = os.path.basename(header["source"]["path"])
    return hashlib.sha256(save(tensors, {"compressor": json.dumps(header, sort_keys=True)})).hexdigest()


@pytest.mark.parametrize("name", sorted(RUNS))
def test_same_seed_same_bytes(name, tmp_path):
    args, onnx_digest, st_digest = RUNS[name]
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", ONE_THREAD, str(SAMPLES / args[0]), *args[1:], "--data", str(HELDOUT),
           "--out", str(out), "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 3), proc.stderr[-2000:]  # 3: a gate failed; the artifacts are still written
    assert sha256(out / "model.onnx") == onnx_digest
    assert weights_sha256(out / "model.safetensors") == st_digest
