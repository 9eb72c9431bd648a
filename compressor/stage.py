"""Stages: the base class, the record a stage returns, and typed, documented configs.

A stage declares ``name``, a one-line ``summary``, a ``Config`` dataclass (every field has a default and a
``help`` in its metadata), the stages it may follow, and ``apply(ctx) -> StageResult``; it never writes files or
builds ONNX. A stage registers through the `compressor.stages` entry point of its package (pyproject.toml); the
``register_stage`` decorator of `compressor.registry` is for stages defined in code (tests, notebooks).
``--set stage.key=value`` values are parsed from the field's type; an unknown key is a usage error naming the
valid ones.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from compressor.errors import UsageError

@dataclass
class StageResult:
    """What a stage changed, in numbers and words (the report never guesses)."""

    model: Any
    notes: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    # a structural stage's declarative record of its compressed form ({"kind": ..., ...}): saved in
    # model.safetensors; the export layer finds the ONNX / int8 rewrites and the rebuild on load by its kind
    structure: dict[str, Any] | None = None
    # ask the runner to export the model once with its structure's rewrite and compare ONNX Runtime with torch
    verify_onnx: bool = False
    # what the stage decided and why, in one line (the terminal's summary); None: its first note says it
    decision: str | None = None

    def decision_line(self) -> str | None:
        """The stage's own decision, else its first warning (a size over budget, an inert rule), else its first
        note."""
        warning = next((n for n in self.notes if n.startswith("WARNING")), None)
        return self.decision or warning or (self.notes[0] if self.notes else None)


class Stage:
    """Base class of a stage that transforms the working model: subclasses set the class attributes and implement
    `apply(ctx) -> StageResult`, where `ctx` is the run's `StageContext` (`compressor.core.contract`: everything a
    stage may read and call). A stage declares what data it needs (`requires_training_data`,
    `requires_calibration`); the run checks them before anything runs."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Config: ClassVar[type] = object
    follows: ClassVar[frozenset[str]] = frozenset()  # stages allowed earlier in the pipeline
    export_time: ClassVar[bool] = False  # runs on the exported ONNX graph, always last (`ExportStage`)
    needs_training_data: ClassVar[bool] = False

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    def requires_training_data(self) -> bool:
        """Whether this configured stage fine-tunes, so the run needs --train-data (a stage set to 0 epochs
        does not)."""
        return self.needs_training_data and getattr(self.config, "epochs", 1) != 0

    def requires_calibration(self) -> str | None:
        """Why this configured stage needs calibration samples, with what to pass (the run refuses it without
        --train-data or --calib-data), or None."""
        return None

    def apply(self, ctx):  # pragma: no cover - interface
        raise NotImplementedError


class ExportStage(Stage):
    """Base class of a stage that runs on the exported ONNX graph, always last: `apply_onnx(ctx, src, dst,
    compact=False) -> StageResult` writes the transformed graph at `src` to `dst` (`compact`: the structures' own
    tensors are int8 already)."""

    export_time: ClassVar[bool] = True

    def apply(self, ctx):  # pragma: no cover - an export-time stage has no torch-side step
        raise NotImplementedError(f"{self.name} runs on the exported graph: apply_onnx")

    def apply_onnx(self, ctx, src, dst, compact: bool = False) -> StageResult:  # pragma: no cover - interface
        raise NotImplementedError


# ---- config fields ---------------------------------------------------------------------------------------------

def option(default: Any, help: str, **kw: Any) -> Any:
    """A config field with its one-line help (shown by `compress stages`)."""
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def config_fields(config_cls: type) -> list[dataclasses.Field]:
    return list(dataclasses.fields(config_cls))


def _field_types(config_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(config_cls)


def type_label(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "|".join(str(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        return "list"
    if origin is typing.Union or origin is types.UnionType:
        return "|".join(type_label(a) for a in typing.get_args(tp) if a is not type(None)) + " or none"
    return getattr(tp, "__name__", str(tp))


def parse_value(tp: Any, raw: Any, where: str) -> Any:
    """Coerce a string (or a recipe value) to the field's type, or raise a UsageError naming the choices."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null", "")):
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return parse_value(a, raw, where)
            except UsageError as exc:
                errors.append(str(exc))
        raise UsageError(f"{where}: {raw!r} is not a valid {type_label(tp)}")
    if origin is Literal:
        choices = [str(a) for a in args]
        if str(raw) not in choices:
            raise UsageError(f"{where}: {raw!r} is not one of {', '.join(choices)}")
        return next(a for a in args if str(a) == str(raw))
    if origin in (tuple, list):
        items = raw if isinstance(raw, (list, tuple)) else [s for s in str(raw).split(",") if s.strip()]
        inner = args[0] if args else str
        return tuple(parse_value(inner, str(i).strip(), where) for i in items)
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"{where}: {raw!r} is not a boolean (true/false)")
    if tp is int:
        try:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            return int(raw) if not isinstance(raw, str) else int(raw.strip())
        except (TypeError, ValueError):
            raise UsageError(f"{where}: {raw!r} is not an integer")
    if tp is float:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise UsageError(f"{where}: {raw!r} is not a number")
        if value != value or value in (float("inf"), float("-inf")):
            raise UsageError(f"{where}: {raw!r} is not a finite number")
        return value
    if tp is str:
        return str(raw)
    raise UsageError(f"{where}: unsupported option type {tp}")


def build_config(stage_cls: type[Stage], values: dict[str, Any], where: str = "--set") -> Any:
    """A validated config for the stage from raw values (unknown keys and bad values are usage errors)."""
    names = {f.name: f for f in config_fields(stage_cls.Config)}
    types = _field_types(stage_cls.Config)
    kwargs = {}
    for key, raw in values.items():
        if key not in names:
            valid = ", ".join(sorted(names)) or "(none)"
            raise UsageError(f"{where}: unknown option {stage_cls.name}.{key}; valid options: {valid}")
        kwargs[key] = parse_value(types[key], raw, f"{where} {stage_cls.name}.{key}")
    config = stage_cls.Config(**kwargs)
    validate = getattr(config, "validate", None)
    if validate is not None:
        problem = validate()
        if problem:
            raise UsageError(f"{where} {stage_cls.name}: {problem}")
    return config


def config_as_dict(config: Any) -> dict[str, Any]:
    out = {}
    for f in config_fields(type(config)):
        v = getattr(config, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def parse_overrides(items: list[str]) -> dict[str, dict[str, str]]:
    """`--set stage.key=value` items grouped by stage."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        stage, dot, opt = key.strip().partition(".")
        if not eq or not dot or not stage or not opt:
            raise UsageError(f"--set {item!r}: expected stage.key=value (e.g. quantize.mode=dynamic)")
        out.setdefault(stage, {})[opt] = value.strip()
    return out
