"""The runner: load, baseline, stages in order (evaluated after each), export, measure the artifacts, report.

Stages get a `RunContext` and never write files; the runner owns every output (see DESIGN.md).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.core.layers import WeightInfo, find_weights
from compressor.core.masks import MaskRegistry
from compressor.core.params import count_params
from compressor.errors import CompressorError, DataError, ModelLoadError, StageError, UsageError
from compressor.export.onnx import handler_of, verify_structure
from compressor.io.calls import other_outputs_notes, predict
from compressor.io.data import Dataset, load_splits
from compressor.io.load import LoadedModel, load_model
from compressor.registry import get_stage, plugin_metrics, validate_order
from compressor.run.progress import Reporter
from compressor.run.ranges import check_ranges
from compressor.stage import Stage, build_config, parse_overrides
from compressor.verify.artifacts import stored_bytes_later
from compressor.verify.budget import (DEFAULT_CONFIDENCE, BudgetDecision, drop, sample_scores, value_within,
                                      within_budget)
from compressor.verify.gates import KNOWN_METRICS
from compressor.verify.kind import BUILTIN, MetricChoice, choose
from compressor.verify.metrics import Metrics, check_labels, evaluate, score
from compressor.verify.power import selection_gap_note
from compressor.verify.saturation import (PROBABILITY_RULES, class_probability_scores, saturated, saturation_note,
                                         within_budget_both)



@dataclass
class RunOptions:
    model: Path
    pipeline: list[str]
    data: Path
    out: Path
    overrides: list[str] = field(default_factory=list)
    train_data: Path | None = None
    val_data: Path | None = None
    calib_data: Path | None = None
    arch: str | None = None
    trust_pickle: bool = False
    force: bool = False
    seed: int = 0
    device: str = "cpu"
    quiet: bool = False
    max_drop: float = 1.0
    min_recovery: float | None = None
    max_bytes: int | None = None
    floors: dict[str, float] = field(default_factory=dict)
    recipe_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> options from a recipe
    resume: bool = False
    keep_checkpoints: bool = False
    threads: int = 1
    metric: str | None = None  # --metric: accuracy | agreement | cosine | mse | a plugin's name (None: detected)


@dataclass
class RunContext:
    """Everything a stage may use (never the held-out set)."""

    model: nn.Module
    original: nn.Module
    loaded: LoadedModel
    train: Dataset | None
    val: Dataset | None
    calib: Dataset | None
    seed: int
    stage_index: int
    device: torch.device
    baseline_val: Metrics | None
    val_reference: torch.Tensor | None
    masks: MaskRegistry
    plan: list[str]
    reporter: Reporter
    weights: list[WeightInfo]
    # the structure records of structural stages (rpg, basis), in order: saved in model.safetensors; the export
    # layer finds by kind how to rebuild each on load and how to rewrite the ONNX graph (fp32 and int8)
    structures: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stage_configs: dict[str, Any] = field(default_factory=dict)  # name -> config of every stage in the plan
    max_drop: float = 1.0  # the run's gate (--max-drop): no stage decision may spend more (verify/budget.py)
    confidence: float = DEFAULT_CONFIDENCE
    metric: MetricChoice = field(default_factory=lambda: MetricChoice("accuracy", "default", loss="ce"))

    @property
    def stage_seed(self) -> int:
        """Each stage's randomness is seeded from (seed, stage index), so a resumed run is exact."""
        return self.seed * 1000 + self.stage_index

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.stage_seed)

    def require_training(self, stage: str) -> tuple[Dataset, Dataset]:
        if self.train is None or self.val is None:
            raise DataError(f"stage {stage!r} fine-tunes the model: pass --train-data (and optionally --val-data)")
        return self.train, self.val

    def validate(self, model: nn.Module | None = None) -> Metrics:
        """The validation metric (for a stage's decisions)."""
        if self.val is None:
            raise DataError("no validation data: pass --train-data or --val-data")
        return evaluate(model or self.model, self.val, self.val_reference, self.device, self.metric)

    def stage_budget(self, stage: str, own: float | None) -> float:
        """A stage's share of the run's budget: its own max_drop if set (never above --max-drop), else half of
        --max-drop when a later stage of the plan also spends points (int8 quantize on top of a pruned model, and
        the gate's own held-out noise: a 75% bound passes a borderline candidate one time in four), else all."""
        if own is not None:
            return min(own, self.max_drop)
        names = [p.strip() for p in self.plan if p.strip()]
        later = names[names.index(stage) + 1:] if stage in names else []
        return self.max_drop / 2 if later else self.max_drop

    def judge(self, stage_budget: float | None = None, model: nn.Module | None = None) -> BudgetDecision:
        """Is the model within budget on validation, in the run's metric? The budget is the run's gate, or a
        stage's own stricter one; the rule is the paired upper confidence bound of `verify/budget.py`, the same
        for every decision (a plugin metric without per-sample scores: its observed value against the budget)."""
        if self.val is None:
            raise DataError("no validation data: pass --train-data or --val-data")
        budget = self.max_drop if stage_budget is None else min(stage_budget, self.max_drop)
        out = predict(model or self.model, self.val, self.device)
        name, labels = self.metric.name, self.val.labels
        base = sample_scores(self.val_reference, labels, self.val_reference, name)
        if base is None:
            value = score(out, self.val, self.val_reference, self.metric).value
            d = drop(self.baseline_val.value, value, self.metric.higher_is_better)
            return BudgetDecision(accepted=value_within(self.baseline_val.value, value, budget,
                                                        self.metric.higher_is_better),
                                  drop=d, bound=d, budget=budget, confidence=self.confidence, n=len(self.val))
        if not bool(torch.isfinite(out).all()):  # NaN/inf outputs: no score of them means anything
            return BudgetDecision(accepted=False, drop=float("inf"), bound=float("inf"), budget=budget,
                                  confidence=self.confidence, n=len(self.val), rule="finite outputs",
                                  other="the model gives NaN or inf on validation")
        cand = sample_scores(out, labels, self.val_reference, name)
        base_p = class_probability_scores(self.val_reference, labels, self.val_reference, name)
        if base_p is None or not saturated(base) or not bool(torch.isfinite(base_p).all()):
            return within_budget(base, cand, budget, self.confidence)
        # a saturated validation set hides from 0/1 scores what fresh data loses: bound the class probability too
        return within_budget_both(base, cand, base_p, class_probability_scores(out, labels, self.val_reference, name),
                                  budget, self.confidence, name)


def plan_stages(options: RunOptions) -> list[Stage]:
    """Resolve names and `--set` values into configured stages; all errors before anything runs."""
    known = (*KNOWN_METRICS, *plugin_metrics())
    for name in options.floors:
        if name not in known:
            raise UsageError(f"--floor {name}: unknown metric; available: {', '.join(known)}")
    check_ranges(options)
    if options.metric not in (None, "auto", *BUILTIN, *plugin_metrics()):
        raise UsageError(f"--metric {options.metric}: unknown; available: {', '.join((*BUILTIN, *plugin_metrics()))}")
    names = [n.strip() for n in options.pipeline if n.strip()]
    validate_order(names)
    overrides = parse_overrides(options.overrides)
    for stage in overrides:
        if stage not in names:
            get_stage(stage)
            raise UsageError(f"--set {stage}.*: stage {stage!r} is not in the pipeline ({','.join(names)})")
    if not Path(options.model).exists():
        raise ModelLoadError(f"model file not found: {options.model}")
    for flag, path in (("--data", options.data), ("--train-data", options.train_data),
                       ("--val-data", options.val_data), ("--calib-data", options.calib_data)):
        if path is not None and not Path(path).is_file():
            raise DataError(f"data file not found: {path} ({flag})")
    stages = [get_stage(n)(build_config(get_stage(n), {**options.recipe_options.get(n, {}), **overrides.get(n, {})}))
              for n in names]
    for st in stages:
        if (getattr(st, "needs_training_data", False) and options.train_data is None
                and getattr(st.config, "epochs", 1) != 0):
            raise UsageError(f"stage {st.name!r} fine-tunes the model: pass --train-data (and optionally --val-data)")
        needs_calib = getattr(st.config, "mode", None) == "static" and st.name == "quantize"
        if needs_calib and options.train_data is None and options.calib_data is None:
            raise UsageError("quantize: static mode needs calibration samples: pass --train-data or --calib-data, "
                             "or use --set quantize.mode=dynamic")
    return stages


def measured_bytes(model: nn.Module) -> int:
    """Size of the model's weights as compressor stores them (encoded safetensors; smallest of raw and gzip),
    measured from a file actually written, never estimated."""
    return stored_bytes_later(model)()


def prepare(options: RunOptions, reporter: Reporter, copy_original: bool = True):
    """Load the model and data; compute the baseline. Returns (context, heldout, baseline, reference, notes).
    `copy_original` False (only export-time stages run): the original is the loaded model itself, not a copy."""
    torch.manual_seed(options.seed)
    try:
        device = torch.device(options.device)
    except RuntimeError:
        raise UsageError(f"--device {options.device!r}: not a torch device (cpu, cuda, cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine")
    loaded = load_model(options.model, options.arch, options.trust_pickle)
    heldout, train, val, calib, notes = load_splits(options.data, options.train_data, options.val_data,
                                                    options.calib_data, loaded.input_names, options.seed,
                                                    loaded.input_dtypes)
    model = loaded.module.to(device)
    original = copy.deepcopy(model) if copy_original else model
    for p in original.parameters() if copy_original else ():
        if p.is_leaf:
            p.requires_grad_(False)
    reporter.log(f"evaluating the baseline on {len(heldout)} held-out samples")
    reference = predict(original, heldout, device)
    val_reference = predict(original, val, device) if val is not None else None
    # the output kind is decided on validation data when there is some (decisions never look at held-out)
    probe, probe_out = (val, val_reference) if val is not None else (heldout, reference)
    try:
        choice = choose(probe_out, probe.labels, options.metric)
    except DataError as exc:  # name the file whose labels or outputs decided it
        raise DataError(f"{probe.source}: {exc}") from None
    if choice.name == "accuracy" and heldout.labels is None:
        raise DataError(f"{heldout.source}: no labels `y`, but the run's metric is accuracy ({choice.reason})")
    if choice.name == "accuracy":
        check_labels(heldout, reference.shape[1] if reference.ndim == 2 else 0)
        for split in (train, val, calib):  # name the file, not torch's IndexError
            if split is not None:
                check_labels(split, reference.shape[1])
    reporter.log(f"metric: {choice.name} ({choice.reason})")
    notes += other_outputs_notes(original, heldout.example(), device)
    baseline = score(reference, heldout, reference, choice)
    baseline_val = score(val_reference, val, val_reference, choice) if val is not None else None
    if baseline_val is not None and choice.name == "accuracy":  # a note only: no decision reads held-out
        notes += filter(None, [selection_gap_note(baseline_val.value, len(val), baseline.value, len(heldout),
                                                  independent=options.val_data is not None)])
    if val is not None and choice.name in PROBABILITY_RULES:
        notes.append(saturation_note(sample_scores(val_reference, val.labels, val_reference, choice.name),
                                     choice.name))
    if loaded.exported:
        notes.append("model loaded from a torch.export program: batch-norm statistics stay frozen when fine-tuning")
    weights = find_weights(model, heldout.example(), loaded.program)
    ctx = RunContext(model=model, original=original, loaded=loaded, train=train, val=val, calib=calib,
                     seed=options.seed, stage_index=0, device=device, baseline_val=baseline_val,
                     val_reference=val_reference, masks=MaskRegistry(), plan=list(options.pipeline),
                     reporter=reporter, weights=weights, max_drop=options.max_drop, metric=choice)
    return ctx, heldout, baseline, reference, notes


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
    seconds = time.perf_counter() - start
    ctx.model = result.model
    ctx.masks.apply(ctx.model)
    metric = evaluate(ctx.model, heldout, reference, ctx.device, ctx.metric)
    params, nonzeros = count_params(ctx.model)
    result.metrics.setdefault("bytes", measured_bytes(ctx.model))
    return {"name": stage.name, "metric_value": metric.value, "metric_extra": metric.extra, "params": params,
            "nonzeros": nonzeros, "dof": int(result.metrics.pop("dof", params)), "seconds": round(seconds, 3),
            "notes": result.notes, **result.metrics}


def check_structure(ctx: RunContext, result) -> None:
    """A stage asked for one export of its structure, compared with torch in ONNX Runtime (`verify_onnx`)."""
    data = ctx.val if ctx.val is not None else ctx.train
    check = verify_structure(result.model, result.structure, data, ctx.device)
    result.metrics.update(check)
    describe = handler_of(result.structure).describe_check
    if describe is not None:
        result.notes.append(describe(check, result.metrics))
