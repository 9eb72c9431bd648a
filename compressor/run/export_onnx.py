"""The run's export phase: the final model exported to ONNX once (fp32), compared with torch in ONNX Runtime, the
fp32 baseline latency measured, and the export-time stage (quantize) applied to that graph."""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch

from compressor.errors import StageError, first_line
from compressor.export.onnx import compact_int8, export_model
from compressor.io.data import Dataset
from compressor.io.load import model_bytes_of
from compressor.io.onnx_files import copy_onnx, save_onnx
from compressor.judge.metrics import score
from compressor.run.pipeline import RunContext
from compressor.runtime.calls import max_abs_diff, onnx_predict_outputs, ort_session, predict
from compressor.runtime.memory import release_memory
from compressor.runtime.timing import ort_latency_spread_ms, same_batch_shapes
from compressor.stage import ExportStage
from compressor.verify.artifacts import baseline_latency_ms, file_sizes, file_sizes_later

LARGE_MODEL_BYTES = 64 * 2**20  # weights above this: the exporter's leftover cycles are collected at once
PARITY_ROWS = 32  # the export's and the reload's parity with torch: a max |difference|, not a score, needs few rows


def first_rows(data: Dataset, n: int = PARITY_ROWS) -> Dataset:
    return data.subset(torch.arange(min(n, len(data))))


@dataclass
class Exported:
    """model.onnx as written, its outputs on held-out, and the fp32 export it was measured against."""

    onnx_path: Path
    session: Any                 # ONNX Runtime session of model.onnx
    onnx_out: torch.Tensor       # model.onnx's outputs on held-out
    final_torch: torch.Tensor    # the final torch model's outputs on held-out (its first PARITY_ROWS before a stage)
    parity: float                # max |fp32 ONNX - torch| on those samples
    fp32_sizes: dict[str, int]
    base_latency: float          # ms, the fp32 original in ONNX Runtime
    record: dict[str, Any] | None  # the export-time stage's record, if one ran
    compacted: bool = False      # the structures' own tensors were made int8 (the torch model took their values)
    base_spread: list[float] | None = None  # [p10, p90] ms of the fp32 original's timed runs
    other_outs: list[torch.Tensor] = field(default_factory=list)  # model.onnx's other outputs (verify/outputs.py)
    # graphs the export-time stage timed on a batch of held-out's shapes, by file sha256 (StageResult): model.onnx's
    # latency is its entry when it is one of them
    timed: dict[str, tuple[float, list[float]]] = field(default_factory=dict)


def export_artifact(ctx: RunContext, stage: ExportStage | None, heldout: Dataset, reference: torch.Tensor,
                    onnx_path: Path, sizes: dict[str, int], changed: bool = True) -> Exported:
    """Write model.onnx: the fp32 export, or the export-time stage's graph made from it. `sizes`: params,
    nonzeros and dof of the model going in (the export-time stage's record repeats them); `changed` False: no
    model stage ran, so the model's outputs are the original's (`reference`). The fp32 graph and the torch model
    run on every held-out sample only when the fp32 graph is model.onnx; before an export-time stage, their parity
    is all they are compared for, on the first PARITY_ROWS samples (at 100M parameters a full pass costs seconds).
    The parity is also left in `ctx.export_parity` for the stage."""
    ctx.reporter.log("exporting to ONNX")
    probe, large = heldout if stage is None else first_rows(heldout), model_bytes_of(ctx.model) >= LARGE_MODEL_BYTES
    final_torch = predict(ctx.model, probe, ctx.device) if changed else reference[:len(probe)]
    with tempfile.TemporaryDirectory(prefix="compressor-x-") as tmp:
        fp32_path = Path(tmp) / "model.fp32.onnx"
        save_onnx(export_model(ctx.model, heldout.example(), str(ctx.device), ctx.structures), fp32_path,
                  working=stage is not None)  # the stage's input, not shipped
        release_memory(collect=large)  # the exporter's traces (cycles) and the graph's serialized copy
        fp32_sizes = file_sizes_later(fp32_path)  # gzip on a background thread while the graph is checked
        fp32_session = runnable_session(fp32_path)
        fp32_out, *fp32_others = onnx_predict_outputs(fp32_session, probe)
        parity = ctx.export_parity = max_abs_diff(fp32_out, final_torch)
        later = stage is not None and not ctx.structures and same_batch_shapes(ctx.val, heldout)  # the stage times it
        base_latency, base_spread = (None, None) if later else baseline_latency_ms(ctx, heldout, fp32_session,
                                                                                   Path(tmp))
        if stage is None:
            copy_onnx(fp32_path, onnx_path)
            return Exported(onnx_path, fp32_session, fp32_out, final_torch, parity, fp32_sizes(), base_latency, None,
                            base_spread=base_spread, other_outs=fp32_others)
        fp32_session = None  # its copy of the weights is freed before the quantizer makes its own
        release_memory()
        record, session, q_outs, compacted, result = apply_export_stage(ctx, stage, fp32_path, onnx_path,
                                                                        Path(tmp), heldout, reference, fp32_out, sizes)
        if later:  # the float graph the stage was given is the fp32 export: its timing, else time it now
            base_latency, base_spread = result.float_latency or ort_latency_spread_ms(ort_session(fp32_path), heldout)
        fp32_sizes = fp32_sizes()
    return Exported(onnx_path, session, q_outs[0], final_torch, parity, fp32_sizes, base_latency, record, compacted,
                    base_spread, q_outs[1:], result.latency_by_sha256 if later else {})


def runnable_session(path: Path):
    """An ONNX Runtime session of the exported graph, or one line saying why ONNX Runtime cannot run it (a bfloat16
    graph's ops have no CPU kernels)."""
    try:
        return ort_session(path)
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own error types, reported in one line
        bf16 = any(t.data_type == onnx.TensorProto.BFLOAT16
                   for t in onnx.load(str(path), load_external_data=False).graph.initializer)
        raise StageError(f"ONNX Runtime cannot run the model's ONNX export ({first_line(exc)})" + (
            "; its bfloat16 weights: ONNX Runtime has no CPU kernels for most bfloat16 ops, so convert the model to "
            "float32 (or float16) before compressing it" if bf16 else "")) from exc


def apply_export_stage(ctx: RunContext, stage: ExportStage, fp32_path: Path, onnx_path: Path, tmp: Path,
                       heldout: Dataset, reference: torch.Tensor, fp32_out: torch.Tensor, sizes: dict[str, int]):
    """Run the export-time stage on the fp32 graph (after the structures' own tensors are made int8, if any);
    returns (its record, the session of model.onnx, model.onnx's held-out outputs (every graph output, the main one
    first), whether the structures' tensors were made int8, the stage's result (its timings of the graphs))."""
    ctx.reporter.log(f"stage {ctx.stage_index + 1}: {stage.name}")
    t0 = time.perf_counter()
    compact = compact_int8(fp32_path, ctx.structures, ctx.model)
    if compact is None:
        result = stage.apply_onnx(ctx, fp32_path, onnx_path)
    else:  # the structures' own tensors are int8 already; ORT's quantizer handles the ordinary layers
        mid = tmp / "structured-int8.onnx"
        save_onnx(compact, mid)
        result = stage.apply_onnx(ctx, mid, onnx_path, compact=True)
    session = ort_session(onnx_path)
    q_outs = onnx_predict_outputs(session, heldout)
    q_out = q_outs[0]
    metric = score(q_out, heldout, reference, ctx.metric)
    record = {"name": stage.name, "metric_value": metric.value, "metric_extra": metric.extra, **sizes,
              "seconds": round(time.perf_counter() - t0, 3), **result.report_fields(),
              "max_abs_diff_vs_fp32": max_abs_diff(q_out[:len(fp32_out)], fp32_out),
              "max_abs_diff_vs_fp32_samples": len(fp32_out), "bytes": file_sizes(onnx_path)["size"]}
    return record, session, q_outs, compact is not None, result
