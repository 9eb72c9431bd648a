"""prune's options (`--set prune.key=value`), each with its default and help."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from compressor.stage import option

DEFAULT_LR, DEFAULT_BATCH = 1e-3, 64  # fine-tunes without selective shrinkage, and the codebook's (lr / 2)


@dataclass
class PruneConfig:
    policy: Literal["blinded", "uniform", "distribution", "lobster"] = option(
        "blinded", "saliency policy: class-blinded, class-uniform, class-distribution (Stier et al.) or LOBSTER")
    rate: float = option(0.1, "fraction of the remaining weights pruned per step")
    schedule: tuple[float, ...] = option((), "explicit sparsity per step (e.g. 0.5,0.7,0.8,0.9); overrides rate")
    target: float = option(0.9, "stop once this sparsity (over the prunable weights) is reached")
    max_drop: float | None = option(None, "stop when validation is more than this much worse than the baseline "
                                          "(points of the run's metric; mse: its rise); default: half of --max-drop "
                                          "when a stage follows (quantize spends points too), else --max-drop")
    patience: int = option(2, "extra fine-tuning rounds (without pruning) to recover before stopping")
    epochs_per_step: int = option(3, "fine-tuning epochs after each pruning step")
    max_steps: int = option(40, "upper bound on pruning steps")
    lookahead: int = option(2, "steps pruned past an over-budget one before stopping at the last step within it")
    lr: float | None = option(None, "fine-tuning learning rate (default: shrink's with selective shrinkage, else "
                                    "fitted by a short probe of 1e-3 down to 1e-5 on training rows: core/lr_probe.py)")
    batch_size: int | None = option(None, "fine-tuning batch size (default: shrink's with selective shrinkage, "
                                          "else 64)")
    max_steps_per_epoch: int = option(0, "cap on optimizer steps per fine-tuning epoch (0: a full pass; a large "
                                      "training set on a transformer: e.g. 100)")
    shrinkage: Literal["auto", "on", "off"] = option("auto", "fine-tune with selective shrinkage between steps "
                                                     "(auto: when shrink precedes prune)")
    include: tuple[str, ...] = option((), "glob patterns of prunable parameters (default: conv/linear weights)")
    exclude: tuple[str, ...] = option((), "glob patterns never pruned")
    lobster_twt: float = option(0.05, "LOBSTER: validation loss may grow by this fraction per step")
    codebook: Literal["auto", "on", "off"] = option("auto", "share non-zeros through a 2^bits k-means codebook: "
                                                    "auto keeps it only if validation stays within max_drop")
    codebook_bits: int = option(4, "codebook index width (4 bits = 16 shared values per layer)")
    codebook_epochs: int = option(3, "fine-tuning epochs of the shared values (trained quantization)")
    distill: float = option(0.0, "with labels: weight of a distillation term to the original model's outputs in "
                                 "every fine-tune (KL at temperature, x T^2; Hinton et al. 2015); 0 = labels only")
    temperature: float = option(2.0, "distillation temperature T")

    def validate(self) -> str | None:
        if not 0 < self.rate < 1:
            return "rate must be in (0, 1)"
        if not 0 < self.target < 1:
            return "target must be in (0, 1)"
        if any(not 0 < s < 1 for s in self.schedule) or list(self.schedule) != sorted(self.schedule):
            return "schedule must be increasing sparsities in (0, 1)"
        if self.codebook_bits not in (1, 2, 4, 8):
            return "codebook_bits must be 1, 2, 4 or 8"
        if self.epochs_per_step < 0 or self.max_steps < 1 or self.lookahead < 0:
            return "epochs_per_step and lookahead must be >= 0 and max_steps >= 1"
        bad_lr = self.lr is not None and self.lr <= 0
        bad_batch = self.batch_size is not None and self.batch_size < 1
        if bad_batch or bad_lr or self.patience < 0 or self.codebook_epochs < 0:
            return "batch_size must be >= 1, lr > 0, patience and codebook_epochs >= 0"
        if self.distill < 0 or self.temperature <= 0:
            return "distill must be >= 0 and temperature > 0"
        if (self.max_drop is not None and self.max_drop < 0) or self.lobster_twt < 0 or self.max_steps_per_epoch < 0:
            return "max_drop, lobster_twt and max_steps_per_epoch must be >= 0"
        return None
