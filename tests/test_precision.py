"""--precision: every fine-tune autocasts its forward pass (bf16 on CPU, fp16 with loss scaling on CUDA) while the
weights, the loss and every evaluation stay float32; the choice is validated, recorded and reproducible."""
from __future__ import annotations

import pytest
import torch
import yaml

from compressor.core.finetune import FinetuneSettings, finetune
from compressor.run.pipeline import RunOptions
from compressor.run.prepare import prepare
from compressor.run.progress import Reporter
from tests.conftest import HELDOUT, SAMPLES, TRAIN, read_report, run_cli


def _context(tmp_path, precision: str):
    options = RunOptions(model=SAMPLES / "digits_mlp.pt2", pipeline=["shrink"], data=HELDOUT, out=tmp_path / "o",
                         train_data=TRAIN, precision=precision)
    return prepare(options, Reporter(quiet=True))[0]


@pytest.mark.parametrize("precision, trained_in", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_fine_tunes_autocast_the_forward_and_evaluate_in_float32(tmp_path, precision, trained_in):
    ctx = _context(tmp_path, precision)
    seen = []
    hook = ctx.model.register_forward_hook(lambda m, i, out: seen.append(out.dtype))  # the logits
    try:
        result = finetune(ctx, ctx.model, FinetuneSettings(epochs=1, lr=1e-3, batch_size=64, max_steps_per_epoch=4))
    finally:
        hook.remove()
    steps = 4  # the training forwards; every other forward is a selection pass on training rows, in float32
    assert seen.count(trained_in) >= steps and len([d for d in seen if d != torch.float32]) in (0, steps), seen
    assert all(p.dtype == torch.float32 for p in ctx.model.parameters())
    assert result.best is not None and result.best.value < 0.2  # trained, not broken: cross-entropy on training rows
    assert ctx.validate().value > 80  # validation accuracy %


def test_bf16_run_is_recorded_and_reproduces(tmp_path):
    args = [SAMPLES / "digits_mlp.pt2", "--pipeline", "prune", "--data", HELDOUT, "--train-data", TRAIN,
            "--set", "prune.target=0.5", "--set", "prune.epochs_per_step=1", "--set", "prune.codebook=off",
            "--precision", "bf16", "--quiet"]
    res = run_cli(*args, "--out", tmp_path / "a")
    assert res.code == 0, res
    report = read_report(tmp_path / "a")
    assert report["precision"] == "bf16" and report["stages"][0]["sparsity"] >= 0.4
    assert yaml.safe_load((tmp_path / "a" / "recipe.yaml").read_text())["precision"] == "bf16"
    assert run_cli(*args, "--out", tmp_path / "b").code == 0
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


@pytest.mark.parametrize("value, message", [("fp16", "needs a CUDA device"), ("int8", "is not one of")])
def test_bad_precision_is_one_usage_line(tmp_path, value, message):
    res = run_cli(SAMPLES / "digits_mlp.pt2", "--pipeline", "prune", "--data", HELDOUT, "--train-data", TRAIN,
                  "--precision", value, "--out", tmp_path / "o")
    assert res.code == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res
    assert not (tmp_path / "o").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_fp16_shrink_prune_passes_the_gate(tmp_path):
    res = run_cli(SAMPLES / "digits_cnn.pt2", "--pipeline", "shrink,prune", "--data", HELDOUT, "--train-data", TRAIN,
                  "--device", "cuda", "--precision", "fp16", "--set", "shrink.epochs=2", "--set", "prune.target=0.5",
                  "--set", "prune.epochs_per_step=1", "--out", tmp_path / "o", "--quiet")
    assert res.code == 0, res
    assert read_report(tmp_path / "o")["gate"]["passed"]


def test_fp16_overflow_skips_the_step_and_every_hook():
    """A step whose scaled gradients overflow is skipped by the scaler; `unscale` says so before any hook (the
    shrinkage rule's decay, the masks) could carry inf/nan into the weights."""
    from compressor.core.precision import MixedPrecision

    mixed = MixedPrecision("bf16", torch.device("cpu"))  # no scaler: always finite
    layer = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(torch.ones(1, 2)).sum().backward()
    assert mixed.unscale(opt) is True
    scaled = MixedPrecision.__new__(MixedPrecision)  # fp16's scaler on CPU tensors (fp16 autocast needs CUDA)
    scaled.dtype, scaled.device_type, scaled.scaler = None, "cpu", torch.amp.GradScaler("cpu")
    before = [p.detach().clone() for p in layer.parameters()]
    opt.zero_grad()
    scaled.backward(layer(torch.tensor([[float("inf"), 1.0]])).sum())
    assert scaled.unscale(opt) is False
    scaled.step(opt)
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters()))  # the step was skipped
