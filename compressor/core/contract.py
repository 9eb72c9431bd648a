"""The stage contract: everything a stage may read and call on the run's context, typed in one place.

The run's `RunContext` (`compressor.run.pipeline`) implements it; stages and the shared mechanics of `core/` see
only this protocol, so a new stage needs nothing from the run beyond it (tests/test_layout.py checks that no
`ctx.<name>` outside it is used in `algorithms/` or `core/`). Decisions go through `judge` (the run's one budget
rule, `compressor.judge.decide`) and `stage_budget` (a stage's share of --max-drop).
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol

import torch
from torch import nn

from compressor.core.layers import WeightInfo
from compressor.core.masks import MaskRegistry
from compressor.io.data import Dataset
from compressor.io.load import LoadedModel
from compressor.judge.budget import BudgetDecision
from compressor.judge.kind import MetricChoice
from compressor.judge.metrics import Metrics


class ProgressTask(Protocol):
    def advance(self, n: int = 1, status: str = "", line: bool = False) -> None: ...

    def status(self, status: str) -> None: ...


class Progress(Protocol):
    """The run's terminal progress (`compressor.run.progress.Reporter`)."""

    def log(self, message: str) -> None: ...

    def task(self, description: str, total: int | None) -> AbstractContextManager[ProgressTask]: ...


class StageContext(Protocol):
    """What a stage may use. Never the held-out set: every decision is made on `val`."""

    model: nn.Module                  # the working model (a stage replaces or changes it)
    original: nn.Module               # the frozen original (distillation, feature geometry)
    loaded: LoadedModel               # where the model came from (format, input names, the .pt2 program)
    train: Dataset | None
    val: Dataset | None
    val_reference: torch.Tensor | None  # the original's main output on `val` (computed once per run)
    calib: Dataset | None
    device: torch.device
    precision: str                    # fine-tunes' autocast: fp32 | bf16 | fp16 (core/precision.py)
    masks: MaskRegistry               # pruned weights, kept zero through every later step
    weights: list[WeightInfo]         # the weights found by the ops that read them (a structural stage updates it)
    metric: MetricChoice              # the run's metric and the loss that matches it
    max_drop: float                   # the run's gate (--max-drop)
    confidence: float                 # --confidence: of a stage's whole search (judge(chances=) splits it per look)
    stage_configs: dict[str, Any]     # name -> config of every stage in the plan
    export_parity: float | None       # an export-time stage's graph: max |fp32 ONNX - torch| on held-out rows

    @property
    def stage_seed(self) -> int: ...

    def generator(self) -> torch.Generator: ...

    @property
    def reporter(self) -> Progress: ...

    def require_training(self, stage: str) -> tuple[Dataset, Dataset]: ...

    def out_of_time(self) -> bool: ...  # --time-limit passed: start no new work, keep the best state within budget

    def validate(self, model: nn.Module | None = None) -> Metrics: ...

    def selection_rows(self) -> Dataset: ...  # training rows a fine-tune chooses its epoch on (never validation)

    def teacher(self, batch: Dataset) -> torch.Tensor: ...  # the original's outputs on a batch (cached: teacher.py)

    def stage_budget(self, stage: str, own: float | None) -> float: ...

    # `chances`: the looks of the stage's search that can keep an over-budget state; each is bounded at
    # 1 - (1 - confidence) / chances so the whole search holds --confidence (judge/looks.py)
    def judge(self, stage_budget: float | None = None, model: nn.Module | None = None,
              outputs: torch.Tensor | None = None, chances: int = 1) -> BudgetDecision: ...


CONTRACT = frozenset(n for n in dir(StageContext) if not n.startswith("_")) | frozenset(
    StageContext.__annotations__)
