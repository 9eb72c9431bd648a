"""The run's verify phase: both artifacts measured as written. model.safetensors is reloaded through
`compressor.load` and compared with torch; model.onnx's metric, bytes, latency and peak memory are measured beside
the fp32 original's."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from compressor.io.data import Dataset
from compressor.io.load import file_sha256
from compressor.io.reload import load as load_artifact
from compressor.judge.kind import MetricChoice
from compressor.judge.metrics import score
from compressor.run.export_onnx import Exported
from compressor.run.pipeline import RunContext, RunOptions
from compressor.runtime.calls import EVAL_BATCH, max_abs_diff, onnx_predict, predict
from compressor.runtime.memory import release_memory
from compressor.runtime.timing import ort_latency_spread_ms
from compressor.verify.artifacts import file_sizes, ort_peak_memory_bytes


def measure_artifacts(ctx: RunContext, options: RunOptions, staging: Path, heldout: Dataset,
                      reference: torch.Tensor, exported: Exported, final_torch: torch.Tensor, st_path: Path,
                      onnx_sha256: str, encodings: dict[str, Any], run_time: bool = False,
                      outputs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The report's artifact rows: model.onnx, then model.safetensors reloaded from the staged output. `run_time`:
    model.onnx quantizes activations at run time (`store.store_weights` read it from the graph). `final_torch`: the
    torch model's outputs on the first held-out samples, which the reloaded safetensors must reproduce. `outputs`:
    model.onnx's secondary outputs judged against the original's (verify/outputs.py)."""
    onnx_path = exported.onnx_path
    onnx_metric = score(exported.onnx_out, heldout, reference, ctx.metric)
    batch = batch_dependence(exported, heldout, reference, ctx.metric) if run_time else None
    if batch is not None:
        ctx.notes.append(f"model.onnx quantizes activations at run time (dynamic int8), so a sample's outputs depend "
                         f"on the batch it runs in: on {batch['samples']} held-out samples one at a time, max |output "
                         f"difference| {batch['max_abs_diff_batch1_vs_batch']:.3g} and {ctx.metric.name} "
                         f"{batch['metric_value_batch1']:.4g}, against {batch['metric_value_batched']:.4g} in batches "
                         f"of {EVAL_BATCH}")
    # the objective's timing of this very graph (in turns with the float graph) when it timed it, else timed now
    latency, spread = exported.timed.get(onnx_sha256) or ort_latency_spread_ms(exported.session, heldout)
    exported.session = None  # its weights and activation arena are freed before the reload and the memory check
    release_memory()
    st_out = reloaded_outputs(ctx, options, staging, heldout)
    st_metric = score(st_out, heldout, reference, ctx.metric)
    return [
        {"path": "model.onnx", **file_sizes(onnx_path), "sha256": onnx_sha256, "metric_value": onnx_metric.value,
         "metric_extra": onnx_metric.extra, "latency_ms": latency, "latency_spread_ms": spread,
         "peak_memory_bytes": ort_peak_memory_bytes(onnx_path, heldout),
         "fp32_baseline_latency_ms": exported.base_latency,
         "fp32_export_bytes": exported.fp32_sizes["bytes"], "fp32_export_gzip_bytes": exported.fp32_sizes["gzip_bytes"],
         "parity_max_abs_diff_fp32_vs_torch": exported.parity,
         "parity_samples": len(exported.final_torch), **({"batch_dependence": batch} if batch else {}),
         **({"outputs": outputs} if outputs else {})},
        {"path": "model.safetensors", **file_sizes(st_path), "sha256": file_sha256(st_path),
         "metric_value": st_metric.value, "latency_ms": None, "peak_memory_bytes": None,
         "reload_max_abs_diff_vs_torch": max_abs_diff(st_out[:len(final_torch)], final_torch),
         "encodings": {k: v["encoding"] for k, v in encodings.items()}},
    ]


def reloaded_outputs(ctx: RunContext, options: RunOptions, staging: Path, heldout: Dataset) -> torch.Tensor:
    """model.safetensors reloaded from the staged output as a user would (`compressor.load`), run on held-out; the
    reloaded copy is freed before the artifact's own peak memory is measured."""
    # the architecture named by this run's own --arch is the user's code, so re-importing it is no new trust
    reloaded = load_artifact(staging, trust_pickle=options.trust_pickle,
                             trust_code=ctx.loaded.format == "state_dict" or options.trust_remote_code)
    out = predict(reloaded, heldout, "cpu")
    del reloaded
    release_memory(collect=True)
    ctx.model.to("cpu")
    return out


BATCH_CHECK_SAMPLES = 512
def batch_dependence(exported: Exported, heldout: Dataset, reference: torch.Tensor,
                     metric: MetricChoice) -> dict[str, Any] | None:
    """For a graph that quantizes activations at run time (one scale per call, over the whole batch): the same
    held-out samples run one at a time beside the batched run."""
    n = min(len(heldout), BATCH_CHECK_SAMPLES)
    data = heldout.subset(torch.arange(n))
    one = onnx_predict(exported.session, data, batch_size=1)
    return {"samples": n, "batch": EVAL_BATCH,
            "max_abs_diff_batch1_vs_batch": float((one - exported.onnx_out[:n]).abs().max()),
            "metric_value_batch1": score(one, data, reference[:n], metric).value,
            "metric_value_batched": score(exported.onnx_out[:n], data, reference[:n], metric).value}
