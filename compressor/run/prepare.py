"""The run's first phase: the device, the model and data loaded, the run's metric chosen on validation, and the
baseline measured (held-out for the report, validation for every decision), gathered into the stages' context."""
from __future__ import annotations

import copy
import math
import warnings

import torch
from torch import nn

from compressor.core.layers import find_weights
from compressor.core.masks import MaskRegistry
from compressor.errors import DataError, UsageError
from compressor.io.data import Dataset, load_splits
from compressor.io.load import load_model
from compressor.judge.budget import sample_scores
from compressor.judge.kind import BUILTIN, MetricChoice, choose
from compressor.judge.metrics import Metrics, check_labels, score
from compressor.judge.power import selection_gap_note
from compressor.judge.saturation import PROBABILITY_RULES, saturation_note
from compressor.run.confirm import hold_back
from compressor.run.pipeline import RunContext, RunOptions
from compressor.run.progress import Reporter
from compressor.runtime.calls import other_outputs_notes, output_names, predict
from compressor.verify.outputs import check_output_names, parse_output_metrics


def prepare(options: RunOptions, reporter: Reporter, copy_original: bool = True):
    """Load the model and data; compute the baseline. Returns (context, heldout, baseline, reference, notes).
    `copy_original` False (only export-time stages run): the original is the loaded model itself, not a copy."""
    torch.manual_seed(options.seed)
    device = run_device(options.device)
    loaded = load_model(options.model, options.arch, options.trust_pickle, options.task, options.trust_remote_code)
    heldout, train, val, calib, notes = load_splits(options.data, options.train_data, options.val_data,
                                                    options.calib_data, loaded.input_names, options.seed,
                                                    loaded.input_dtypes, loaded.data_encoder)
    val, confirm = hold_back(val, options.confirm, options.seed)
    model = loaded.module.to(device)
    original = frozen_copy(model) if copy_original else model
    reporter.log(f"evaluating the baseline on {len(heldout)} held-out samples")
    reference = predict(original, heldout, device)
    val_reference = predict(original, val, device) if val is not None else None
    confirm_reference = predict(original, confirm, device) if confirm is not None else None  # before any stage
    choice = run_metric(options, heldout, reference, val, val_reference, (train, val, calib, confirm))
    reporter.log(f"metric: {choice.name} ({choice.reason})")
    notes += output_notes(options, original, heldout, device)
    baseline = score(reference, heldout, reference, choice)
    baseline_val = score(val_reference, val, val_reference, choice) if val is not None else None
    notes += baseline_notes(options, choice, baseline, baseline_val, heldout, val, val_reference)
    if loaded.exported and any(name.endswith("running_mean") for name, _ in model.named_buffers()):
        notes.append("model loaded from a torch.export program: batch-norm statistics stay frozen when fine-tuning")
    weights = find_weights(model, heldout.example(), loaded.program)
    ctx = RunContext(model=model, original=original, loaded=loaded, train=train, val=val, calib=calib,
                     seed=options.seed, stage_index=0, device=device, baseline_val=baseline_val,
                     val_reference=val_reference, masks=MaskRegistry(), plan=list(options.pipeline),
                     reporter=reporter, weights=weights, max_drop=options.max_drop, metric=choice,
                     confidence=options.confidence, precision=options.precision, confirm=confirm,
                     confirm_reference=confirm_reference)
    return ctx, heldout, baseline, reference, notes


def output_notes(options: RunOptions, original: nn.Module, heldout: Dataset, device: torch.device) -> list[str]:
    """The model's outputs named (a requested per-output metric must name one) and, when several, a note."""
    names = output_names(original, heldout.example(), device)
    options.output_metrics = parse_output_metrics(options.output_metrics)  # the Python API's mapping checked too
    check_output_names(options.output_metrics, names)
    return other_outputs_notes(names)


def run_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r}: not a torch device (cpu, cuda, cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine")
    return device


def frozen_copy(model: nn.Module) -> nn.Module:
    """The original model, kept as loaded: no parameter of it is ever trained."""
    with warnings.catch_warnings():  # a torch.export module's deepcopy warns of torch's own deprecated treespec API
        warnings.simplefilter("ignore", FutureWarning)
        original = copy.deepcopy(model)
    for p in original.parameters():
        if p.is_leaf:
            p.requires_grad_(False)
    return original


def run_metric(options: RunOptions, heldout: Dataset, reference: torch.Tensor, val: Dataset | None,
               val_reference: torch.Tensor | None, splits: tuple[Dataset | None, ...]) -> MetricChoice:
    """The run's metric, from the output kind on validation data when there is some (decisions never look at
    held-out), with the labels of every split checked against it."""
    probe, probe_out = (val, val_reference) if val is not None else (heldout, reference)
    try:
        choice = choose(probe_out, probe.labels, options.metric)
    except DataError as exc:  # name the file whose labels or outputs decided it
        raise DataError(f"{probe.source}: {exc}") from None
    if choice.name == "accuracy" and heldout.labels is None:
        raise DataError(f"{heldout.source}: no labels `y`, but the run's metric is accuracy ({choice.reason})")
    if choice.name == "accuracy":
        check_labels(heldout, reference.shape[1] if reference.ndim == 2 else 0)
        for split in splits:  # name the file, not torch's IndexError
            if split is not None:
                check_labels(split, reference.shape[1])
    return choice


def baseline_notes(options: RunOptions, choice: MetricChoice, baseline: Metrics, baseline_val: Metrics | None,
                   heldout: Dataset, val: Dataset | None, val_reference: torch.Tensor | None) -> list[str]:
    """Notes only (no decision reads held-out): validation scoring the original higher than held-out does, and a
    saturated validation set."""
    notes: list[str] = []
    if baseline_val is not None and choice.name == "accuracy":
        notes += filter(None, [selection_gap_note(baseline_val.value, len(val), baseline.value, len(heldout),
                                                  independent=options.val_data is not None)])
    if val is not None and choice.name in PROBABILITY_RULES:
        notes.append(saturation_note(sample_scores(val_reference, val.labels, val_reference, choice.name),
                                     choice.name))
    if choice.counted and len(heldout) and 100.0 / len(heldout) > options.max_drop:
        notes.append(f"WARNING: one held-out sample is {100.0 / len(heldout):.2f} points of {choice.name} on "
                     f"{len(heldout)} samples, more than --max-drop {options.max_drop:g}: the gate fails on a single "
                     f"changed prediction; about {math.ceil(100.0 / options.max_drop) if options.max_drop else 'many'}"
                     " held-out samples would let it see one")
    if val is not None and choice.name not in BUILTIN:  # judge/decide.py: a plugin's value has no per-sample form
        notes.append(f"WARNING: {choice.name} (a plugin metric) has no per-sample scores, so every stage decision "
                     f"compares its observed validation value with the budget: no --confidence bound, and a search's "
                     f"many looks on one validation set favour lucky candidates; the gate on held-out still applies")
    return notes
