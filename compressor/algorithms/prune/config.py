"""prune's options (`--set prune.key=value`), each with its default and help."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from compressor.core.finetune_options import FinetuneOptions
from compressor.schema import option

DEFAULT_LR, DEFAULT_BATCH = 1e-3, 64  # fine-tunes without selective shrinkage, and the codebook's (lr / 2)


@dataclass
class PruneConfig(FinetuneOptions):
    lr: float | None = option(None, "fine-tuning learning rate (default: shrink's with selective shrinkage, else "
                                    "fitted by a short probe of 1e-3 down to 1e-5 on training rows: core/lr_probe.py)",
                              gt=0)
    batch_size: int | None = option(None, "fine-tuning batch size (default: shrink's with selective shrinkage, "
                                          "else 64)", ge=1)
    policy: Literal["blinded", "uniform", "distribution", "lobster"] = option(
        "blinded", "saliency policy of criterion=magnitude: class-blinded, class-uniform, class-distribution "
                   "(Stier et al.) or LOBSTER")
    criterion: Literal["magnitude", "wanda", "sparsegpt"] = option(
        "magnitude", "which weights each step prunes: magnitude (by `policy`), or from one calibration pass over the "
                     "inputs of the linear weights: wanda (|w| x input norm, per output row) or sparsegpt "
                     "(layer-wise reconstruction, kept weights updated); both prune every layer alike")
    calib_samples: int = option(512, "calibration rows (seeded) of wanda and sparsegpt", ge=1)
    rate: float = option(0.1, "fraction of the remaining weights pruned per step", gt=0, lt=1)
    schedule: tuple[float, ...] = option((), "explicit sparsity per step (e.g. 0.5,0.7,0.8,0.9); overrides rate",
                                         gt=0, lt=1)
    target: float = option(0.9, "stop once this sparsity (over the prunable weights) is reached", gt=0, lt=1)
    patience: int = option(0, "extra fine-tuning rounds (without pruning) to recover before stopping; each is one "
                                 "more judged look, so every look's bound is stricter (judge/looks.py)", ge=0)
    epochs_per_step: int = option(3, "fine-tuning epochs after each pruning step", ge=0)
    max_steps: int = option(40, "upper bound on pruning steps", ge=1)
    lookahead: int = option(1, "steps pruned past an over-budget one before stopping at the last step within it "
                               "(each multiplies the looks of judge/looks.py)", ge=0)
    shrinkage: Literal["auto", "on", "off"] = option("auto", "fine-tune with selective shrinkage between steps "
                                                     "(auto: when shrink precedes prune)")
    include: tuple[str, ...] = option((), "glob patterns of prunable parameters (default: conv/linear weights)")
    exclude: tuple[str, ...] = option((), "glob patterns never pruned")
    lobster_twt: float = option(0.05, "LOBSTER: validation loss may grow by this fraction per step", ge=0)
    codebook: Literal["auto", "on", "off"] = option("auto", "share non-zeros through a 2^bits k-means codebook: "
                                                    "auto keeps it only if validation stays within max_drop")
    codebook_bits: int = option(4, "codebook index width (4 bits = 16 shared values per layer)")
    codebook_epochs: int = option(3, "fine-tuning epochs of the shared values (trained quantization)", ge=0)

    def validate(self) -> str | None:
        """What the fields' ranges cannot say alone."""
        if list(self.schedule) != sorted(self.schedule):
            return "schedule must be increasing sparsities in (0, 1)"
        if self.criterion != "magnitude" and self.policy == "lobster":
            return f"policy=lobster searches a magnitude threshold: it does not combine with criterion={self.criterion}"
        if self.codebook_bits not in (1, 2, 4, 8):
            return "codebook_bits must be 1, 2, 4 or 8"
        return None
