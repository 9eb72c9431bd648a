"""The run's state: `RunOptions` (what the user asked for) and `RunContext` (the run's implementation of the stage
contract, `compressor.core.contract.StageContext`, plus what only the run reads: the seed, the plan, the
structures and notes collected).

Stages get the context and never write files; the runner owns every output (see DESIGN.md).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.core.layers import WeightInfo
from compressor.core.masks import MaskRegistry
from compressor.core.teacher import TeacherOutputs
from compressor.errors import DataError
from compressor.io.data import Dataset, calibration_subset
from compressor.io.load import LoadedModel
from compressor.defaults import DEFAULT_CONFIDENCE
from compressor.judge.budget import BudgetDecision
from compressor.judge.decide import judge_outputs, judge_model, stage_budget
from compressor.judge.kind import MetricChoice
from compressor.judge.looks import per_look_confidence
from compressor.judge.metrics import Metrics, evaluate
from compressor.run.progress import Reporter
from compressor.run.settings import RunSettings
from compressor.runtime.parallel import from_rank0

SELECTION_ROWS = 512  # training rows a fine-tune chooses its epoch on (`RunContext.selection_rows`)


@dataclass(kw_only=True)
class RunOptions(RunSettings):
    """What the user asked for: the files, the stages and their options, and the run settings (run/settings.py)."""

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
    output_metrics: dict[str, str] = field(default_factory=dict)  # --output-metric NAME=KIND (verify/outputs.py)
    trust_remote_code: bool = False  # a Hugging Face directory's own modelling code (config.json auto_map)
    force: bool = False
    quiet: bool = False
    floors: dict[str, float] = field(default_factory=dict)
    recipe_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> options from a recipe
    resume: bool = False
    keep_checkpoints: bool = False


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
    confirm: Dataset | None = None  # validation rows no stage decision sees: the final confirmation's (run/confirm.py)
    confirm_reference: torch.Tensor | None = None  # the original's outputs on them, taken before any stage ran
    notes: list[str] = field(default_factory=list)
    stage_configs: dict[str, Any] = field(default_factory=dict)  # name -> config of every stage in the plan
    max_drop: float = 1.0  # the run's gate (--max-drop): no stage decision may spend more (judge/budget.py)
    confidence: float = DEFAULT_CONFIDENCE
    metric: MetricChoice = field(default_factory=lambda: MetricChoice("accuracy", "default", loss="ce"))
    deadline: float | None = None  # time.perf_counter() value of --time-limit's end (None: no limit)
    precision: str = "fp32"  # --precision: every fine-tune's autocast (core/precision.py)
    export_parity: float | None = None  # max |fp32 ONNX - torch| of the graph an export-time stage is given
    _teacher: TeacherOutputs | None = field(default=None, repr=False)
    _selection: Dataset | None = field(default=None, repr=False)

    @property
    def stage_seed(self) -> int:
        """Each stage's randomness is seeded from (seed, stage index), so a resumed run is exact."""
        return self.seed * 1000 + self.stage_index

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.stage_seed)

    def out_of_time(self) -> bool:
        """Whether --time-limit has passed: searches and fine-tunes then start no new work and keep the best state
        found within budget. In a data-parallel run rank 0's clock decides for every rank (runtime/parallel.py)."""
        if self.deadline is None:
            return False
        return bool(from_rank0(time.perf_counter() > self.deadline))

    def require_training(self, stage: str) -> tuple[Dataset, Dataset]:
        if self.train is None or self.val is None:
            raise DataError(f"stage {stage!r} fine-tunes the model: pass --train-data (and optionally --val-data)")
        return self.train, self.val

    def teacher(self, batch: Dataset) -> torch.Tensor:
        """The frozen original's outputs on `batch`, computed once for the training set (core/teacher.py)."""
        if self._teacher is None:
            self._teacher = TeacherOutputs(self.original, self.train if self.train is not None else batch,
                                           self.device)
        return self._teacher.outputs(batch)

    def validate(self, model: nn.Module | None = None) -> Metrics:
        """The validation metric (for a stage's decisions)."""
        if self.val is None:
            raise DataError("no validation data: pass --train-data or --val-data")
        return evaluate(model or self.model, self.val, self.val_reference, self.device, self.metric)

    def selection_rows(self) -> Dataset:
        """A seeded slice of the training data (the same for every stage) that a fine-tune chooses its epoch on: a
        choice made on the validation set that then judges the chosen state would make the judgement optimistic
        (judge/looks.py); the slice is never validation or held-out data."""
        if self.train is None:
            raise DataError("no training data: pass --train-data")
        if self._selection is None:
            self._selection = calibration_subset(self.train, SELECTION_ROWS, self.seed)
        return self._selection

    def stage_budget(self, stage: str, own: float | None) -> float:
        """A stage's share of the run's budget (`judge/decide.py`)."""
        return stage_budget(self.plan, stage, own, self.max_drop)

    def judge(self, stage_budget: float | None = None, model: nn.Module | None = None,
              outputs: torch.Tensor | None = None, chances: int = 1) -> BudgetDecision:
        """Is the model (or `outputs` on the validation set, e.g. a quantized graph's) within budget on validation
        (the run's gate, or a stage's own stricter budget)? `chances`: how many looks of the stage's search can keep
        an over-budget candidate; each then bounds at the confidence that holds --confidence for the whole search
        (judge/looks.py)."""
        if self.val is None:
            raise DataError("no validation data: pass --train-data or --val-data")
        budget = self.max_drop if stage_budget is None else min(stage_budget, self.max_drop)
        confidence = per_look_confidence(self.confidence, chances)
        if outputs is not None:
            return judge_outputs(outputs, self.val, self.val_reference, self.baseline_val, self.metric, budget,
                                 confidence)
        return judge_model(model or self.model, self.val, self.val_reference, self.baseline_val, self.metric,
                           self.device, budget, confidence)
