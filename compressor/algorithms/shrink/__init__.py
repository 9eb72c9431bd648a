"""shrink: fine-tuning with selective shrinkage (Bonetta et al. 2023; LOBSTER rule). The stage is here; the
regularisers it shares with prune live in `compressor.core.shrinkage`."""
from compressor.algorithms.shrink.stage import ShrinkStage

__all__ = ["ShrinkStage"]
