"""The run's torch-side phase: each model stage applied in order (or restored from its checkpoint on --resume),
measured on held-out after it, its structure checked in ONNX Runtime when it asks."""
from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from compressor.core.params import count_params
from compressor.errors import CompressorError, StageError
from compressor.export.onnx import handler_of, verify_structure
from compressor.io.data import Dataset
from compressor.judge.metrics import evaluate
from compressor.run.checkpoint import Checkpoints
from compressor.run.pipeline import RunContext
from compressor.runtime.parallel import from_rank0, world
from compressor.stage import Stage
from compressor.verify.artifacts import stored_bytes_later


def run_stages(stages: list[Stage], ctx: RunContext, heldout: Dataset, reference: torch.Tensor,
               ckpt: Checkpoints | None, resume: bool) -> list[dict[str, Any]]:
    """Every torch-side stage in order; one record each. Masks are baked into the weights at the end."""
    records = []
    for i, stage in enumerate(stages):
        ctx.stage_index = i
        if from_rank0(ckpt is not None and resume and ckpt.finished(i, stage.name)):  # ranks agree
            ctx.reporter.log(f"stage {i + 1}: {stage.name} (restored from its checkpoint)")
            records.append(ckpt.restore(i, stage.name, ctx))
            continue
        records.append(run_model_stage(stage, ctx, heldout, reference))
        if ckpt is not None and world()[0] == 0:  # only rank 0 of a data-parallel run writes
            ckpt.save(i, stage.name, ctx, records[-1])
    ctx.masks.apply(ctx.model)  # bake masks into the weights before export
    return records


def run_model_stage(stage: Stage, ctx: RunContext, heldout: Dataset, reference: torch.Tensor) -> dict[str, Any]:
    """Apply one torch-side stage and measure it on the held-out set."""
    ctx.reporter.log(f"stage {ctx.stage_index + 1}: {stage.name}")
    torch.manual_seed(ctx.stage_seed)
    start = time.perf_counter()
    try:
        result = stage.apply(ctx)
        if result.structure is not None and result.verify_onnx:
            check_structure(ctx, result)
    except CompressorError:
        raise
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise StageError(f"stage {stage.name!r} failed: {type(exc).__name__}: {msg}") from exc
    if result.structure is not None:
        ctx.structures.append(result.structure)
    if ctx.deadline is not None and time.perf_counter() > ctx.deadline:
        result.notes.append("--time-limit reached by the end of this stage: its searches and fine-tunes started no "
                            "new work after it and kept the best state within budget found by then (a result "
                            "that depends on this machine's speed)")
    seconds = time.perf_counter() - start
    ctx.model = result.model
    ctx.masks.apply(ctx.model)
    metric = evaluate(ctx.model, heldout, reference, ctx.device, ctx.metric)
    params, nonzeros = count_params(ctx.model)
    result.metrics.setdefault("bytes", measured_bytes(ctx.model))
    return {"name": stage.name, "metric_value": metric.value, "metric_extra": metric.extra, "params": params,
            "nonzeros": nonzeros, "dof": int(result.metrics.pop("dof", params)), "seconds": round(seconds, 3),
            **result.report_fields(), **result.metrics}


def check_structure(ctx: RunContext, result) -> None:
    """A stage asked for one export of its structure, compared with torch in ONNX Runtime (`verify_onnx`)."""
    data = ctx.val if ctx.val is not None else ctx.train
    check = verify_structure(result.model, result.structure, data, ctx.device)
    result.metrics.update(check)
    describe = handler_of(result.structure).describe_check
    if describe is not None:
        result.notes.append(describe(check, result.metrics))


def measured_bytes(model: nn.Module) -> int:
    """Size of the model's weights as compressor stores them (encoded safetensors; smallest of raw and gzip),
    measured from a file actually written, never estimated."""
    return stored_bytes_later(model)()
