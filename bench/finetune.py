"""Benchmark: what compressor's fine-tuning loop costs beside a bare PyTorch loop doing the same optimizer steps.

For each sample model, in one run: `compressor.core.finetune.finetune` (masks applied after every step, the loss
on the run's selection rows after every epoch, the best epoch's state kept) against a plain loop with the same model copy, optimizer (Adam,
cosine schedule), batches (the same seeded order), loss (cross-entropy with labels; distillation to the original's
outputs without, looked up from the same cache of the original's outputs in both: core/teacher.py) and number of
steps, with nothing else. The table gives both wall times, their ratio, and how much of ours is the epoch choice
(the selection pass, timed apart): the overhead a fine-tuning stage pays per epoch beyond the optimizer steps.

    python -m bench.finetune            (writes bench/results/finetune.md)
"""
from __future__ import annotations

import copy
import math
import tempfile
import time
from pathlib import Path

import torch

from compressor.core.finetune import FinetuneSettings, finetune, selection_loss, task_loss
from compressor.report.cpu import cpu_info
from compressor.run.pipeline import RunOptions
from compressor.run.prepare import prepare
from compressor.run.progress import Reporter
from compressor.runtime.calls import call_model, set_train

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
EPOCHS = 3
MODELS = {"digits_mlp": "digits", "digits_cnn": "digits", "text_classifier": "text", "text_embedder": "embed"}


def context(name: str, files: str, tmp: Path):
    options = RunOptions(model=SAMPLES / f"{name}.pt2", pipeline=["shrink"], data=SAMPLES / f"{files}_heldout.npz",
                         out=tmp / "unused", train_data=SAMPLES / f"{files}_train.npz", force=True)
    ctx, _, _, _, _ = prepare(options, Reporter(quiet=True))
    return ctx


def bare_loop(ctx, model: torch.nn.Module, settings: FinetuneSettings) -> float:
    """The same optimizer steps with nothing else: no masks, no validation, no state copies."""
    train = ctx.train
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    steps = math.ceil(len(train) / settings.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, settings.epochs * steps))
    gen = ctx.generator()
    start = time.perf_counter()
    for _ in range(settings.epochs):
        set_train(model, True)
        for batch in train.batches(settings.batch_size, gen):
            opt.zero_grad(set_to_none=True)
            out = call_model(model, batch, ctx.device)
            task_loss(ctx, model, batch, out).backward()
            opt.step()
            sched.step()
    set_train(model, False)
    return time.perf_counter() - start


def main() -> str:
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, files in MODELS.items():
            ctx = context(name, files, Path(tmp))
            settings = FinetuneSettings(epochs=EPOCHS)
            bare_model = copy.deepcopy(ctx.model)
            t0 = time.perf_counter()
            if ctx.metric.loss != "ce":  # label-free: the original's outputs on the training set, once for both
                ctx.teacher(next(ctx.train.batches(settings.batch_size)))
            teacher = time.perf_counter() - t0
            start = time.perf_counter()
            finetune(ctx, ctx.model, settings, desc="bench")
            ours = time.perf_counter() - start
            t0 = time.perf_counter()
            selection_loss(ctx, ctx.model)
            validation = (time.perf_counter() - t0) * (EPOCHS + 1)  # the start state and every epoch
            bare = bare_loop(ctx, bare_model, settings)
            steps = EPOCHS * math.ceil(len(ctx.train) / settings.batch_size)
            rows.append([name, f"{sum(p.numel() for p in ctx.model.parameters()):,}", f"{len(ctx.train):,}",
                         f"{len(ctx.selection_rows()):,}", str(steps), f"{ours:.2f}", f"{bare:.2f}", f"{ours / bare:.2f}",
                         f"{validation:.2f}", f"{(ours - validation) / bare:.2f}", f"{teacher:.2f}"])
            print(name, rows[-1], flush=True)
    header = ["model", "params", "train", "selection rows", "optimizer steps", "ours s", "bare loop s", "ours / bare",
              "of ours: epoch choice s", "ours without it / bare", "original's outputs cached once, s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    cpu = cpu_info()
    text = (f"# bench/finetune.py\n\n{EPOCHS} epochs, batch 64, Adam with a cosine schedule, 2 threads, on "
            f"{cpu['cpu']}; ours and the bare loop measured in one run, one after the other. Without labels both "
            "look up the original's outputs in one cache, computed once before either (its time in the last "
            "column; before the cache, every step of both ran the original).\n\n"
            + "\n".join(lines) + "\n")
    print(text)
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "finetune.md").write_text(text)
    return text


if __name__ == "__main__":
    main()
