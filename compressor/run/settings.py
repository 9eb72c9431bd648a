"""The run-level settings, declared once (`compressor.schema.option`): type, default, range, help, and where a recipe
holds each (`recipe` key). The command line's help and defaults, the recipe's checks, the merge of command line over
recipe over default (`merge_settings`), the range check before any work (`check_settings`) and the resolved
recipe.yaml all read these declarations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from compressor.defaults import CONFIRM_MIN, DEFAULT_CONFIDENCE, precision_error
from compressor.errors import UsageError
from compressor.io.hf.files import TASKS
from compressor.schema import default_of, fields_of, option, parse_field

# torch.manual_seed takes 64 bits and each stage seeds itself from seed * 1000 + stage index: a 32-bit seed
SEED_MAX = 2 ** 32 - 1
# metric -> (low, high) of a meaningful floor; a plugin metric's floor need only be finite
FLOOR_RANGES = {"accuracy": (0.0, 100.0), "agreement": (0.0, 100.0), "cosine_min": (-1.0, 1.0),
                "cosine_mean": (-1.0, 1.0)}


@dataclass(kw_only=True)
class RunSettings:
    """What a run may be told besides its files and stages (on the command line: --name-with-dashes)."""

    seed: int = option(0, "Seed for every random choice.", ge=0, le=SEED_MAX, recipe="seed")
    device: str = option("cpu", "Torch device for stages and evaluation (cpu, cuda, cuda:1).", recipe="device")
    threads: int = option(1, "Threads for torch and ONNX Runtime, pinned so a seed gives the same bytes whatever "
                             "OMP_NUM_THREADS.", ge=1, recipe="threads")
    metric: str | None = option(None, "Primary metric for every decision, the gate and the report: accuracy, "
                                      "agreement, cosine, mse or a plugin's name (default: detected from the outputs "
                                      "and data).", recipe="metric")
    confidence: float = option(DEFAULT_CONFIDENCE, "One-sided confidence that a stage's whole search keeps no state "
                                                   "over its budget: each of its looks bounds the validation drop "
                                                   "at 1 - (1 - confidence) / looks.", ge=0.5, lt=1,
                               recipe="confidence")
    confirm: float = option(0.2, "Fraction of the validation set no stage decision sees, used once at the end to "
                                 "confirm model.onnx (stepping back along the stages when it fails); held back only "
                                 f"when that is at least {CONFIRM_MIN} samples; 0: off.", ge=0, lt=1,
                            recipe="confirm")
    time_limit: float | None = option(None, "Wall-clock budget for the stages (e.g. 30m, 2h, 900): past it no search "
                                            "or fine-tune starts new work and each keeps the best state within budget "
                                            "found so far; export and verification still run (default: none).",
                                      gt=0, recipe="time_limit", duration=True)
    precision: Literal["fp32", "bf16", "fp16"] = option("fp32", "Fine-tunes' forward pass in bf16 or fp16 (CUDA); "
                                                                "weights and every evaluation stay fp32.",
                                                        recipe="precision")
    max_drop: float = option(1.0, "Gate: largest allowed metric drop in points (exit 3).", ge=0, le=100,
                             recipe="gates.max_drop")
    min_recovery: float | None = option(None, "Gate: final/baseline metric ratio at least this (e.g. 0.99).",
                                        gt=0, le=1, recipe="gates.min_recovery")
    max_bytes: int | None = option(None, "Gate: model.onnx size (smallest of raw and gzip bytes) at most this.",
                                   ge=1, recipe="gates.max_bytes")
    task: Literal[TASKS] | None = option(None, "What a Hugging Face model directory is run for, which sets its "
                                               f"output: {', '.join(TASKS)} (default: from its config.json).",
                                         recipe="task")


SETTINGS = {f.name: f for f in fields_of(RunSettings)}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def setting_help(name: str) -> str:
    """A setting's help for the command line, with its default (Typer escapes square brackets as markup)."""
    f = SETTINGS[name]
    default = default_of(f)
    shown = "none" if default is None else default
    return f"{f.metadata['help']} \\[default: {shown}]"


def recipe_value(settings: dict[str, Any], name: str) -> Any:
    """The recipe's value of a setting (None when the recipe does not set it)."""
    section, _, key = SETTINGS[name].metadata["recipe"].rpartition(".")
    holder = settings.get(section, {}) if section else settings
    return (holder or {}).get(key)


def parse_setting(name: str, raw: Any, where: str) -> Any:
    """A raw setting (command line text or a recipe value) parsed to its type and checked against its range."""
    if SETTINGS[name].metadata.get("duration"):
        return parse_duration(raw, where)
    return parse_field(RunSettings, name, raw, where)


def merge_settings(cli: dict[str, Any], recipe: dict[str, Any]) -> dict[str, Any]:
    """Every setting: the command line's value, else the recipe's, else the declared default."""
    merged = {}
    for name, f in SETTINGS.items():
        if cli.get(name) is not None:
            merged[name] = parse_setting(name, cli[name], flag(name))
        elif recipe_value(recipe, name) is not None:
            merged[name] = parse_setting(name, recipe_value(recipe, name), f"recipe {f.metadata['recipe']}")
        else:
            merged[name] = default_of(f)
    return merged


DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def device_problem(device: str) -> str | None:
    if device.split(":")[0] not in DEVICE_TYPES:
        return f"device must be cpu, cuda, cuda:N, mps or xpu (got {device!r})"
    return None


def check_settings(options) -> None:
    """Check, before any work, every setting of a RunOptions (from the command line, a recipe or the Python API)
    against its declaration, and store it as its type (a seed given as "3" becomes 3); then what involves two
    settings (the precision the device can run) and the gate floors. A usage error names the flag."""
    for name in SETTINGS:
        setattr(options, name, parse_setting(name, getattr(options, name), flag(name)))
    if (problem := device_problem(options.device)) is not None:
        raise UsageError(f"--device: {problem}")
    if (problem := precision_error(options.precision, options.device)) is not None:
        raise UsageError(f"--precision: {problem}")
    for name, value in options.floors.items():
        low, high = FLOOR_RANGES.get(name, (-math.inf, math.inf))
        finite = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        if not finite or not low <= value <= high:
            raise UsageError(f"--floor {name}={value}: expected a value from {low:g} to {high:g}")


DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value, flag: str) -> float | None:
    """Seconds from `90`, `90s`, `30m`, `1.5h` (None stays None); a usage error naming `flag` otherwise."""
    if value is None:
        return None
    text = str(value).strip().lower()
    unit = DURATION_UNITS.get(text[-1:], None) if text else None
    try:
        seconds = float(text[:-1] if unit else text) * (unit or 1.0)
    except ValueError:
        seconds = math.nan
    if isinstance(value, bool) or not math.isfinite(seconds) or seconds <= 0:
        raise UsageError(f"{flag} {value!r}: expected a positive duration: seconds, or a number with s, m or h "
                         "(e.g. 30m)")
    return seconds
