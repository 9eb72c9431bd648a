"""`compress(options)`: the whole job, from checkpoint to artifacts and report, with the accuracy gate."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import onnx
import torch

from compressor.core.params import count_params
from compressor.export.int8_weights import match_int8
from compressor.export.onnx import compact_int8, export_model
from compressor.export.rebuild import load as load_artifact, source_record
from compressor.io.calls import onnx_predict, predict
from compressor.io.load import file_sha256, model_bytes_of
from compressor.io.onnx_export import copy_onnx, max_abs_diff, ort_session, save_onnx, write_bytes_atomic
from compressor.io.safetensors_io import save_weights
from compressor.io.threads import pin_threads
from compressor.report.build import build_report, write_reports
from compressor.report.plots import accuracy_vs_size, latency_bars
from compressor.report.sparsity import sparsity_section
from compressor.run.checkpoint import Checkpoints, fingerprint
from compressor.run.outputs import OutputDir
from compressor.run.pipeline import RunOptions, plan_stages, prepare, run_model_stage
from compressor.run.progress import Reporter
from compressor.run.recipe import resolved_recipe
from compressor.stage import config_as_dict
from compressor.verify.artifacts import (baseline_latency_ms, file_sizes, file_sizes_later, ort_latency_ms,
                                         ort_peak_memory_bytes, slower_warnings, stored_bytes_later)
from compressor.verify.metrics import evaluate, score
from compressor.verify.power import resolution_note
from compressor.version import __version__

EXIT_OK, EXIT_GATE = 0, 3


def compress(options: RunOptions, reporter: Reporter | None = None) -> tuple[dict[str, Any], int]:
    """Run the pipeline; returns (report, exit code). Raises CompressorError on bad input."""
    reporter = reporter or Reporter(quiet=options.quiet)
    stages = plan_stages(options)
    inputs = [p for p in (options.model, options.data, options.train_data, options.val_data, options.calib_data) if p]
    out = OutputDir(options.out, options.force, inputs, resume=options.resume)
    previous_threads = pin_threads(options.threads)
    try:
        ckpt = None
        if any(not s.export_time for s in stages):
            ckpt = Checkpoints(options.out, fingerprint(options, stages), options.resume)
        report = _run(options, stages, out, reporter, ckpt)
        out.commit()
        if ckpt is not None and not options.keep_checkpoints:
            ckpt.remove()
    except BaseException:
        out.abort()
        raise
    finally:
        torch.set_num_threads(previous_threads)
    return report, (EXIT_OK if report["gate"]["passed"] else EXIT_GATE)


def _run(options: RunOptions, stages, out: OutputDir, reporter: Reporter, ckpt: Checkpoints | None) -> dict[str, Any]:
    started = time.perf_counter()
    model_stages = [s for s in stages if not s.export_time]
    ctx, heldout, baseline, reference, notes = prepare(options, reporter, copy_original=bool(model_stages))
    base_bytes = model_bytes_of(ctx.original)
    base_stored = None if model_stages else stored_bytes_later(ctx.original)  # it is ctx.model: before int8
    ctx.stage_configs = {s.name: s.config for s in stages}
    if ctx.val is not None and ctx.metric.counted and ctx.val_reference.ndim == 2:  # 0/1 scores, one per sample
        shares = {s.name: ctx.stage_budget(s.name, s.config.max_drop) for s in stages  # plugins: a number or None
                  if isinstance(getattr(s.config, "max_drop", ""), (int, float, type(None)))}
        notes += filter(None, [resolution_note(shares, len(ctx.val), ctx.confidence, ctx.max_drop)])
    params, nonzeros = count_params(ctx.model)
    records = []
    export_stage = next((s for s in stages if s.export_time), None)
    for i, stage in enumerate(model_stages):
        ctx.stage_index = i
        if ckpt is not None and options.resume and ckpt.finished(i, stage.name):
            reporter.log(f"stage {i + 1}: {stage.name} (restored from its checkpoint)")
            records.append(ckpt.restore(i, stage.name, ctx))
            continue
        records.append(run_model_stage(stage, ctx, heldout, reference))
        if ckpt is not None:
            ckpt.save(i, stage.name, ctx, records[-1])
    ctx.masks.apply(ctx.model)  # bake masks into the weights before export

    reporter.log("exporting to ONNX")
    final_torch = predict(ctx.model, heldout, ctx.device) if model_stages else reference
    onnx_path = out.path("model.onnx")
    with tempfile.TemporaryDirectory(prefix="compressor-x-") as tmp:
        fp32_path = Path(tmp) / "model.fp32.onnx"
        save_onnx(export_model(ctx.model, heldout.example(), str(ctx.device), ctx.structures), fp32_path)
        fp32_sizes = file_sizes_later(fp32_path)  # gzip on a background thread while the graph is checked
        fp32_session = ort_session(fp32_path)
        fp32_out = onnx_predict(fp32_session, heldout)
        parity = max_abs_diff(fp32_out, final_torch)
        base_latency = baseline_latency_ms(ctx, heldout, fp32_session, Path(tmp))
        if export_stage is not None:
            fp32_session = None  # its copy of the weights is freed before the quantizer makes its own
            ctx.stage_index = len(model_stages)
            reporter.log(f"stage {ctx.stage_index + 1}: {export_stage.name}")
            t0 = time.perf_counter()
            compact = compact_int8(fp32_path, ctx.structures, ctx.model)
            if compact is None:
                result = export_stage.apply_onnx(ctx, fp32_path, onnx_path)
            else:  # the structures' own tensors are int8 already; ORT's quantizer handles the ordinary layers
                mid = Path(tmp) / "structured-int8.onnx"
                save_onnx(compact, mid)
                result = export_stage.apply_onnx(ctx, mid, onnx_path, compact=True)
            session = ort_session(onnx_path)
            q_out = onnx_predict(session, heldout)
            metric = score(q_out, heldout, reference, ctx.metric)
            records.append({"name": export_stage.name, "metric_value": metric.value, "metric_extra": metric.extra,
                            "params": records[-1]["params"] if records else params,
                            "nonzeros": records[-1]["nonzeros"] if records else nonzeros,
                            "dof": records[-1]["dof"] if records else params,
                            "seconds": round(time.perf_counter() - t0, 3), "notes": result.notes,
                            "max_abs_diff_vs_fp32": max_abs_diff(q_out, fp32_out),
                            "bytes": file_sizes(onnx_path)["size"]})
            onnx_out = q_out
        else:
            copy_onnx(fp32_path, onnx_path)
            session, onnx_out = fp32_session, fp32_out
        fp32_sizes = fp32_sizes()

    reporter.log("writing and verifying model.safetensors")
    st_path = out.path("model.safetensors")
    meta = {"source": source_record(ctx.loaded), "compressor_version": __version__, "seed": options.seed,
            "stages": [{"name": s.name, "config": config_as_dict(s.config)} for s in stages],
            "structures": ctx.structures}
    onnx_sha256 = file_sha256(onnx_path)
    state = ctx.model.state_dict()
    int8 = match_int8(onnx.load(str(onnx_path)), state) if export_stage is not None else None
    encodings = save_weights(state, st_path, meta, onnx_sha256=onnx_sha256, int8=int8)
    if int8:  # the torch model takes the stored int8 weights, so the reload check below stays exact
        with torch.no_grad():
            for name, weight in int8.items():
                if encodings.get(name, {}).get("encoding") == "int8":  # a tied alias keeps its stored twin's values
                    state[name].copy_(weight.dequantize())
        final_torch = predict(ctx.model, heldout, ctx.device)
        floats = [w.name for w in ctx.weights if w.name in state and w.name not in int8]
        four = sum(1 for w in int8.values() if w.bits == 4)
        ctx.notes.append(f"model.safetensors: {len(int8)} weights stored as model.onnx holds them ("
                         + (f"{four} 4-bit block-wise, {len(int8) - four} int8; " if four else "int8; ")
                         + "dequantized on load)" + (f"; {len(floats)} stay float: no int8 form of their own in the graph (folded "
                                       "into another op, e.g. conv + batch norm, or kept float by quantize)"
                                       if floats else ""))
    # the architecture named by this run's own --arch is the user's code, so re-importing it is no new trust
    reloaded = load_artifact(out.staging, trust_pickle=options.trust_pickle,
                             trust_code=ctx.loaded.format == "state_dict")
    st_out = predict(reloaded, heldout, "cpu")
    del reloaded  # one torch copy of the weights fewer while the artifact's own peak memory is measured
    ctx.model.to("cpu")
    onnx_metric = score(onnx_out, heldout, reference, ctx.metric)
    st_metric = score(st_out, heldout, reference, ctx.metric)
    artifacts = [
        {"path": "model.onnx", **file_sizes(onnx_path), "sha256": onnx_sha256, "metric_value": onnx_metric.value,
         "metric_extra": onnx_metric.extra,
         "latency_ms": ort_latency_ms(session, heldout), "peak_memory_bytes": ort_peak_memory_bytes(onnx_path, heldout),
         "fp32_baseline_latency_ms": base_latency,
         "fp32_export_bytes": fp32_sizes["bytes"], "fp32_export_gzip_bytes": fp32_sizes["gzip_bytes"],
         "parity_max_abs_diff_fp32_vs_torch": parity},
        {"path": "model.safetensors", **file_sizes(st_path), "sha256": file_sha256(st_path),
         "metric_value": st_metric.value, "latency_ms": None,
         "peak_memory_bytes": None, "reload_max_abs_diff_vs_torch": max_abs_diff(st_out, final_torch),
         "encodings": {k: v["encoding"] for k, v in encodings.items()}},
    ]
    if ctx.masks:
        plot = out.path("sparsity.png")
        sparse = sparsity_section(ctx.model, list(ctx.masks.masks), artifacts,
                                  {k: v["encoding"] for k, v in encodings.items()}, plot)
    else:
        sparse = None
    notes += slower_warnings(artifacts, base_latency)
    report = build_report(options=options, ctx=ctx, baseline=baseline, base_params=params,
                          base_bytes=base_bytes, base_stored_bytes=(base_stored or stored_bytes_later(ctx.original))(),
                          records=records, artifacts=artifacts,
                          notes=notes + ctx.notes, seconds=time.perf_counter() - started)
    if sparse is not None:
        report["sparsity"] = sparse
    report["baseline"]["latency_ms"] = base_latency
    if accuracy_vs_size(report, out.path("accuracy_vs_size.png")):
        report["plots"] = {"accuracy_vs_size": "accuracy_vs_size.png"}
    if latency_bars(report, out.path("latency.png")):
        report.setdefault("plots", {})["latency"] = "latency.png"
    write_bytes_atomic(out.path("recipe.yaml"), resolved_recipe(options, stages).encode())
    write_reports(report, out)
    return report
