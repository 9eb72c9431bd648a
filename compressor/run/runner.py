"""`compress(options)`: the whole job, from checkpoint to artifacts and report, with the accuracy gate.

The run follows the flow in phases, one module each: plan (`plan.py`) -> load and baseline (`prepare.py`) -> the
torch-side stages (`stages.py`) -> ONNX export and the export-time stage (`export_onnx.py`) -> model.safetensors
(`store.py`) -> both artifacts measured as written (`measure.py`) -> the report (here).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from compressor.core.params import count_params
from compressor.errors import StageError
from compressor.io.load import file_sha256, model_bytes_of
from compressor.io.onnx_files import write_bytes_atomic
from compressor.judge.looks import per_look_confidence
from compressor.judge.power import resolution_note
from compressor.report.build import build_report, write_reports
from compressor.report.plots import accuracy_vs_size, latency_bars
from compressor.report.sparsity import sparsity_section
from compressor.run.checkpoint import Checkpoints, fingerprint
from compressor.run.confirm import StepBack, confirm_artifact, confirmation_note
from compressor.run.export_onnx import export_artifact, first_rows
from compressor.run.measure import measure_artifacts
from compressor.run.outputs import OutputDir
from compressor.run.pipeline import RunContext, RunOptions
from compressor.run.plan import plan_stages
from compressor.run.prepare import prepare
from compressor.run.progress import Reporter
from compressor.run.recipe import resolved_recipe
from compressor.run.stages import run_stages
from compressor.run.store import store_weights
from compressor.runtime.calls import predict
from compressor.runtime.parallel import all_digests, backend, state_digest, stop, world
from compressor.runtime.threads import pin_threads
from compressor.stage import Stage
from compressor.verify.artifacts import slower_warnings, stored_bytes_later
from compressor.verify.outputs import verify_outputs

EXIT_OK, EXIT_GATE = 0, 3


def compress(options: RunOptions, reporter: Reporter | None = None) -> tuple[dict[str, Any], int]:
    """Run the pipeline; returns (report, exit code). Raises CompressorError on bad input."""
    reporter = reporter or Reporter(quiet=options.quiet)
    stages = plan_stages(options)
    if world()[0] > 0:
        return _other_rank(options, stages, reporter)
    inputs = [p for p in (options.model, options.data, options.train_data, options.val_data, options.calib_data) if p]
    out = OutputDir(options.out, options.force, inputs, resume=options.resume)
    previous_threads = torch.get_num_threads()
    try:
        pin_threads(options.threads)
        ckpt = None
        if any(not s.export_time for s in stages):
            ckpt = Checkpoints(options.out, fingerprint(options, stages), options.resume)
        report = _confirmed_run(options, stages, out, reporter, ckpt)
        out.commit()
        if ckpt is not None and not options.keep_checkpoints:
            ckpt.remove()
    except BaseException:
        out.abort()
        raise
    finally:
        torch.set_num_threads(previous_threads)
    return report, (EXIT_OK if report["gate"]["passed"] else EXIT_GATE)


def _other_rank(options: RunOptions, stages: list[Stage], reporter: Reporter) -> tuple[None, int]:
    """A data-parallel rank other than 0 (runtime/parallel.py): the same load and torch-side stages in step with rank 0,
    which alone writes (checkpoints, artifacts, report); this rank ends when the stages do."""
    previous_threads = pin_threads(options.threads)
    try:
        model_stages = [s for s in stages if not s.export_time]
        ckpt = None  # read on --resume (rank 0 wrote them), never written here
        if options.resume and model_stages:
            ckpt = Checkpoints(options.out, fingerprint(options, stages), resume=True)
        ctx, heldout, _, reference, _ = prepare(options, reporter, copy_original=bool(model_stages))
        ctx.stage_configs = {s.name: s.config for s in stages}
        ctx.deadline = None if options.time_limit is None else time.perf_counter() + options.time_limit
        run_stages(model_stages, ctx, heldout, reference, ckpt, options.resume)
        leave_group(ctx)
    finally:
        torch.set_num_threads(previous_threads)
    return None, EXIT_OK


def _confirmed_run(options: RunOptions, stages: list[Stage], out: OutputDir, reporter: Reporter,
                   ckpt: Checkpoints | None) -> dict[str, Any]:
    """The run, and while model.onnx fails its final confirmation (run/confirm.py) the run again one stage shorter:
    the export-time stage dropped first, then each torch-side stage (past one that kept its input, to the state before
    it), the rest restored from their checkpoints. The plan stays the one asked for (each stage's budget share and the
    resolved recipe.yaml, which rerun repeats the same steps back); the report's pipeline is what shipped."""
    back = StepBack(looks=max(1, len(stages)), plan=stages, started=time.perf_counter(), parallel=world()[1] > 1)
    report = _run(options, stages, out, reporter, ckpt, back)
    shipped = stages
    while shipped and not (report.get("confirmation") or {"accepted": True})["accepted"] and not back.parallel:
        back.tried.append(report["confirmation"])
        kept = [(s.get("outcome") or {}).get("kept") for s in report["stages"]]  # one per stage shipped
        shipped, kept = shipped[:-1], kept[:-1]
        while shipped and kept and kept[-1] == "input":  # a stage that kept its input: the same state again
            shipped, kept = shipped[:-1], kept[:-1]
        reporter.log("model.onnx failed its final confirmation: stepping back to "
                     + (",".join(s.name for s in shipped) or "the original model"))
        out.clear()
        if ckpt is not None and any(not s.export_time for s in shipped):
            ckpt = Checkpoints(options.out, ckpt.fp, resume=True)
        report = _run(dataclasses.replace(options, resume=True), shipped, out, reporter, ckpt, back)
    return report


def _run(options: RunOptions, stages: list[Stage], out: OutputDir, reporter: Reporter,
         ckpt: Checkpoints | None, back: StepBack) -> dict[str, Any]:
    started = back.started  # a step back's try is timed from the run's start
    model_stages = [s for s in stages if not s.export_time]
    ctx, heldout, baseline, reference, notes = prepare(options, reporter, copy_original=bool(model_stages))
    base = {"bytes": model_bytes_of(ctx.original),  # without a model stage the original is ctx.model: before int8
            "stored": None if model_stages else stored_bytes_later(ctx.original)}
    ctx.stage_configs = {s.name: s.config for s in back.plan}
    ctx.deadline = None if options.time_limit is None else started + options.time_limit
    notes += resolution_notes(ctx, back.plan)
    params, nonzeros = count_params(ctx.model)
    records = run_stages(model_stages, ctx, heldout, reference, ckpt, options.resume)
    parallel = back.parallel_entry = back.parallel_entry or leave_group(ctx)  # a step back runs on rank 0 alone
    export_stage = next((s for s in stages if s.export_time), None)
    ctx.stage_index = len(model_stages)
    last = records[-1] if records else {"params": params, "nonzeros": nonzeros, "dof": params}
    exported = export_artifact(ctx, export_stage, heldout, reference, out.path("model.onnx"),
                               {k: last[k] for k in ("params", "nonzeros", "dof")}, changed=bool(model_stages))
    if exported.record is not None:
        records.append(exported.record)
    st_path = out.path("model.safetensors")
    onnx_sha256 = file_sha256(exported.onnx_path)
    # before store_weights rounds the torch model to int8: in a quantize-only run that model is the original itself
    outputs = verify_outputs(ctx.original, exported.other_outs, heldout, ctx.device, options.output_metrics,
                             options.max_drop)
    encodings, changed, run_time = store_weights(ctx, options, stages, st_path, exported.onnx_path, onnx_sha256,
                                       quantized=export_stage is not None)
    # the torch model took stored int8 values (weights, or the structures' compact tensors): its outputs moved
    final_torch = predict(ctx.model, first_rows(heldout), ctx.device) if changed or exported.compacted \
        else exported.final_torch
    artifacts = measure_artifacts(ctx, options, out.staging, heldout, reference, exported, final_torch, st_path,
                                  onnx_sha256, encodings, run_time, outputs)
    confirmed = confirm_artifact(ctx, exported.onnx_path, back, [s.name for s in stages])
    notes.append(confirmation_note(confirmed, back.tried, len(ctx.val or []) + len(ctx.confirm or []), options.confirm))
    run = {"baseline": baseline, "base_params": params, "base": base, "records": records, "artifacts": artifacts,
           "encodings": encodings, "latency": exported.base_latency, "latency_spread": exported.base_spread,
           "started": started, "parallel": parallel, "confirmation": confirmed}
    return write_report(options, ctx, back.plan, out, notes, run)


def leave_group(ctx: RunContext) -> dict[str, Any]:
    """After the torch-side stages, every rank of a data-parallel run compares what it holds (a digest of the
    weights and masks) and leaves the process group; rank 0 goes on alone. Returns the report's `parallel` entry."""
    rank, size = world()
    if size == 1:
        return {"world_size": 1}
    which = backend()
    digests = all_digests(state_digest(ctx.model, ctx.masks.masks))
    stop()
    if rank == 0 and len(set(digests)) > 1:
        raise StageError(f"the {size} data-parallel ranks ended the stages with different weights or masks")
    return {"world_size": size, "backend": which, "state_digests": digests}


def resolution_notes(ctx: RunContext, stages: list[Stage]) -> list[str]:
    """A warning when validation is too small to resolve a stage's share of the budget (0/1 scores only)."""
    if ctx.val is None or not ctx.metric.counted or ctx.val_reference.ndim != 2:
        return []
    shares = {s.name: ctx.stage_budget(s.name, getattr(s.config, "max_drop", None)) for s in stages  # quantize: none
              if isinstance(getattr(s.config, "max_drop", None), (int, float, type(None)))}  # plugins: a number or None
    looks = {s.name: per_look_confidence(ctx.confidence, s.planned_looks()) for s in stages}
    return list(filter(None, [resolution_note(shares, len(ctx.val), looks, ctx.max_drop)]))


def write_report(options: RunOptions, ctx: RunContext, stages: list[Stage], out: OutputDir, notes: list[str],
                 run: dict[str, Any]) -> dict[str, Any]:
    """The report (JSON, Markdown, terminal), its plots and the resolved recipe, written into the staged output."""
    artifacts, encodings = run["artifacts"], run["encodings"]
    sparse = None
    if ctx.masks:
        sparse = sparsity_section(ctx.model, list(ctx.masks.masks), artifacts,
                                  {k: v["encoding"] for k, v in encodings.items()}, out.path("sparsity.png"))
    notes = notes + slower_warnings(artifacts, run["latency"])
    report = build_report(options=options, ctx=ctx, baseline=run["baseline"], base_params=run["base_params"],
                          base_bytes=run["base"]["bytes"],
                          base_stored_bytes=(run["base"]["stored"] or stored_bytes_later(ctx.original))(),
                          records=run["records"], artifacts=artifacts, notes=notes + ctx.notes,
                          seconds=time.perf_counter() - run["started"])
    if sparse is not None:
        report["sparsity"] = sparse
    report["baseline"]["latency_ms"] = run["latency"]
    report["baseline"]["latency_spread_ms"] = run["latency_spread"]
    report["parallel"], report["confirmation"] = run["parallel"], run["confirmation"]
    if accuracy_vs_size(report, out.path("accuracy_vs_size.png")):
        report["plots"] = {"accuracy_vs_size": "accuracy_vs_size.png"}
    if latency_bars(report, out.path("latency.png")):
        report.setdefault("plots", {})["latency"] = "latency.png"
    write_bytes_atomic(out.path("recipe.yaml"), resolved_recipe(options, stages).encode())
    write_reports(report, out)
    return report
