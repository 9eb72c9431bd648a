"""The options every fine-tuning stage shares, declared once: a stage's config inherits them and changes a default
with `compressor.schema.with_default` (same help and range), so `lr` or `max_drop` means one thing everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass

from compressor.schema import option


@dataclass
class StageBudget:
    """A stage's own share of the run's drop budget (`compressor.judge.decide.stage_budget`)."""

    max_drop: float | None = option(None, "the stage's own budget for its decisions, in points of the run's metric "
                                          "(mse: its rise); default: half of --max-drop when a later stage also "
                                          "spends points, else all of it; never above --max-drop", ge=0)


@dataclass
class FinetuneOptions(StageBudget):
    """How a stage fine-tunes (core/finetune.py): Adam (or the stage's optimizer) on a cosine schedule, optionally
    distilling from the original model's outputs (Hinton et al. 2015)."""

    lr: float = option(1e-3, "fine-tuning learning rate (cosine annealed)", gt=0)
    batch_size: int = option(64, "fine-tuning minibatch size", ge=1)
    max_steps_per_epoch: int = option(0, "cap on optimizer steps per fine-tuning epoch (0: a full pass; a large "
                                         "training set on a transformer: e.g. 100)", ge=0)
    distill: float = option(0.0, "weight of a distillation term to the original model's outputs in every "
                                 "fine-tune (T^2 x KL of temperature-T softmaxes; Hinton et al. 2015); 0: off "
                                 "(with labels: labels only)", ge=0)
    temperature: float = option(2.0, "distillation temperature T", gt=0)
