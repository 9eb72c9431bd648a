"""Stages: the base class, the record a stage returns, and typed, documented configs.

A stage declares ``name``, a one-line ``summary``, a ``Config`` dataclass (every field declared with
`compressor.schema.option`: a default, a ``help`` and a range), the stages it may follow, and ``apply(ctx) ->
StageResult``; it never writes files or builds ONNX. A stage registers through the `compressor.stages` entry point of
its package (pyproject.toml); the ``register_stage`` decorator of `compressor.registry` is for stages defined in code
(tests, notebooks). ``--set stage.key=value`` values are parsed from the field's type and checked against its range;
an unknown key is a usage error naming the valid ones.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from compressor.errors import UsageError
from compressor.schema import build, option

__all__ = ["ExportStage", "Outcome", "Stage", "StageResult", "build_config", "option", "parse_overrides"]


@dataclass(frozen=True)
class Outcome:
    """What a stage decided, as fields a test, a CI script or `compress diff` reads without parsing prose.

    `kept`: what the stage's output is: "compressed" (its change, within budget), "input" (nothing was within
    budget, or nothing to do: the input unchanged), or quantize's shipped form ("static", "dynamic", "mixed",
    "weight_only", "4bit", "float"). `stop`: why the search ended (prune: "target", "over_budget", "exhausted",
    "time_limit", "no_threshold"; a judged search: "within_budget", "none_within", "over_budget" (kept anyway:
    grow=false), "unjudged"; quantize: the objective that chose, "balanced", "latency" or "size", or "run_metric"
    when its judgement in the run's metric overruled the choice).
    `value` and `unit`: the headline number (e.g. 0.651, "sparsity"). `bound` and `budget`: the deciding upper
    confidence bound on the validation drop and the stage's share of --max-drop, in points (None: not judged)."""

    kept: str
    stop: str = ""
    value: float | None = None
    unit: str = ""
    bound: float | None = None
    budget: float | None = None


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
    # the same decision as fields (report.json `outcome`), so nothing downstream parses the wording
    outcome: Outcome | None = None
    # an export-time stage that timed the float graph it was given (quantize's objective, on a validation batch):
    # (median ms, [p10, p90]); the run's fp32 baseline reuses it when that batch has held-out's shapes
    float_latency: tuple[float, list[float]] | None = None
    # every graph it timed on that batch, by the sha256 of its file: model.onnx's latency when it is one of them
    latency_by_sha256: dict[str, tuple[float, list[float]]] = field(default_factory=dict)

    def decision_line(self) -> str | None:
        """The stage's own decision, else its first warning (a size over budget, an inert rule), else its first
        note."""
        warning = next((n for n in self.notes if n.startswith("WARNING")), None)
        return self.decision or warning or (self.notes[0] if self.notes else None)

    def report_fields(self) -> dict[str, Any]:
        """What report.json records of the decision: the notes, the one line, and the outcome's fields."""
        return {"notes": self.notes, "decision": self.decision_line(),
                "outcome": dataclasses.asdict(self.outcome) if self.outcome is not None else None}


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

    # the stage traces the model on an example input: a .pt2 program carries one, any other model needs a data
    # file that is not held-out (--train-data, --val-data or --calib-data); the run checks before any work
    needs_example_input: bool = False

    def requires_calibration(self) -> str | None:
        """Why this configured stage needs calibration samples, with what to pass (the run refuses it without
        --train-data or --calib-data), or None."""
        return None

    def planned_looks(self) -> int:
        """How many judged looks this configured stage's search can spend on over-budget states, when its config
        alone says (judge/looks.py; a search whose count depends on the model or data says 1, the least)."""
        return 1

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


# ---- configs: declared with `compressor.schema.option` (re-exported here for plugins) ------------------------------

def build_config(stage_cls: type[Stage], values: dict[str, Any], where: str = "--set") -> Any:
    """A validated config for the stage from raw values (unknown keys and bad values are usage errors)."""
    return build(stage_cls.Config, values, where, prefix=f"{stage_cls.name}.")


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
