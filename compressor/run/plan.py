"""Planning a run: stage names and `--set` values resolved into configured stages, every input checked, all before
anything runs."""
from __future__ import annotations

from pathlib import Path

from compressor.errors import DataError, ModelLoadError, UsageError
from compressor.io.hf.files import is_hf_dir, missing_model_message
from compressor.judge.kind import BUILTIN
from compressor.registry import get_stage, plugin_metrics, validate_order
from compressor.run.pipeline import RunOptions
from compressor.run.settings import check_settings
from compressor.stage import Stage, build_config, parse_overrides
from compressor.verify.gates import KNOWN_METRICS


def plan_stages(options: RunOptions) -> list[Stage]:
    """Resolve names and `--set` values into configured stages; all errors before anything runs."""
    check_floor_names(options)
    check_settings(options)
    check_metric_name(options)
    names = [n.strip() for n in options.pipeline if n.strip()]
    validate_order(names)
    overrides = parse_overrides(options.overrides)
    for stage in overrides:
        if stage not in names:
            get_stage(stage)
            raise UsageError(f"--set {stage}.*: stage {stage!r} is not in the pipeline ({','.join(names)})")
    check_input_files(options)
    stages = [get_stage(n)(build_config(get_stage(n), {**options.recipe_options.get(n, {}), **overrides.get(n, {})}))
              for n in names]
    check_stage_needs(options, stages)
    if options.resume and all(st.export_time for st in stages):
        raise UsageError(f"--resume: nothing to resume: {','.join(names)} runs at export only and keeps no "
                         "checkpoints; run again without --resume")
    return stages


def check_floor_names(options: RunOptions) -> None:
    known = (*KNOWN_METRICS, *plugin_metrics())
    for name in options.floors:
        if name not in known:
            raise UsageError(f"--floor {name}: unknown metric; available: {', '.join(known)}")


def check_metric_name(options: RunOptions) -> None:
    if options.metric not in (None, "auto", *BUILTIN, *plugin_metrics()):
        raise UsageError(f"--metric {options.metric}: unknown; available: {', '.join((*BUILTIN, *plugin_metrics()))}")


def check_input_files(options: RunOptions) -> None:
    """The inputs exist; a directory as data only with a Hugging Face model (an image folder: the loaded model's
    image processor decides whether it can read it)."""
    if not Path(options.model).exists():
        raise ModelLoadError(missing_model_message(Path(options.model)))
    hf = is_hf_dir(Path(options.model))
    for flag, path in (("--data", options.data), ("--train-data", options.train_data),
                       ("--val-data", options.val_data), ("--calib-data", options.calib_data)):
        if path is not None and Path(path).is_dir():
            if hf:
                continue
            raise DataError(f"{flag} {path} is a directory, not a data file (.npz or .pt; an image folder needs a "
                            "Hugging Face image-classification model directory as MODEL)")
        if path is not None and not Path(path).is_file():
            raise DataError(f"data file not found: {path} ({flag})")


def check_stage_needs(options: RunOptions, stages: list[Stage]) -> None:
    """Each stage declares the data it needs (`Stage.requires_training_data`, `Stage.requires_calibration`)."""
    for st in stages:
        if st.requires_training_data() and options.train_data is None:
            raise UsageError(f"stage {st.name!r} fine-tunes the model: pass --train-data (and optionally --val-data)")
        reason = st.requires_calibration()
        if reason and options.train_data is None and options.calib_data is None:
            raise UsageError(f"{st.name}: {reason}")
        if (st.needs_example_input and Path(options.model).suffix != ".pt2"
                and options.train_data is None and options.val_data is None and options.calib_data is None):
            raise UsageError(f"{st.name}: traces the model on an example input, which only a .pt2 program carries: "
                             "pass --train-data, --val-data or --calib-data")
