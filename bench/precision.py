"""Benchmark: a fine-tune in float32 beside the same fine-tune with --precision bf16 (autocast forward pass, float32
weights and validation), on this machine's CPU.

For each model, in one run: the same seeded optimizer steps (Adam, batch 64, `STEPS` steps) through
`compressor.core.finetune.finetune` in each precision, from the same starting weights; wall time and the validation
metric after. bf16 is fast only where the CPU has bf16 instructions (AVX-512 BF16, AMX); elsewhere torch emulates
it. The 10M row is bench/scale.py's random-init encoder (made in a temporary folder).

    python -m bench.precision          (writes bench/results/precision.md)
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from bench.scale import make_model
from bench.tables import write_table
from compressor.core.finetune import FinetuneSettings, finetune
from compressor.report.cpu import cpu_info
from compressor.run.pipeline import RunOptions
from compressor.run.prepare import prepare
from compressor.run.progress import Reporter

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
STEPS = 60


def runs(tmp: Path):
    for name, files in (("digits_cnn", "digits"), ("text_classifier", "text"), ("text_embedder", "embed")):
        yield name, SAMPLES / f"{name}.pt2", {k: SAMPLES / f"{files}_{k}.npz" for k in ("train", "val", "heldout")}
    folder = tmp / "10M"
    make_model("10M", folder)
    yield "10M encoder (random init)", folder / "model.pt2", {k: folder / f"{k}.npz" for k in ("train", "val", "heldout")}


def one(model: Path, files: dict[str, Path], precision: str, tmp: Path) -> tuple[float, float]:
    options = RunOptions(model=model, pipeline=["shrink"], data=files["heldout"], out=tmp / "unused",
                         train_data=files["train"], val_data=files["val"], force=True, precision=precision)
    ctx = prepare(options, Reporter(quiet=True))[0]
    if ctx.metric.loss != "ce":
        ctx.teacher(next(ctx.train.batches(64)))  # the original's outputs cached before timing, as a stage does
    epochs = max(1, -(-STEPS * 64 // len(ctx.train)))
    settings = FinetuneSettings(epochs=epochs, lr=1e-4, batch_size=64, max_steps_per_epoch=-(-STEPS // epochs))
    start = time.perf_counter()
    result = finetune(ctx, ctx.model, settings, desc="bench", select_best=False)
    seconds = time.perf_counter() - start
    return seconds, ctx.validate().value


def main() -> str:
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, files in runs(Path(tmp)):
            (t32, v32), (t16, v16) = (one(model, files, p, Path(tmp)) for p in ("fp32", "bf16"))
            rows.append([name, f"{t32:.1f}", f"{t16:.1f}", f"{t32 / t16:.2f}", f"{v32:.4g}", f"{v16:.4g}"])
            print(" | ".join(rows[-1]), flush=True)
    cpu = cpu_info()
    header = ["model", "fp32 s", "bf16 s", "speed-up", "validation after, fp32", "validation after, bf16"]
    return write_table("precision", f"{STEPS} optimizer steps (Adam, lr 1e-4, batch 64), 2 threads, on {cpu['cpu']} "
                       f"({cpu['cpu_features']}); both precisions measured in one run, one after the other, from the "
                       "same weights and batches; validation measured after the steps (float32 in both).",
                       header, rows)


if __name__ == "__main__":
    main()
