"""prune: iterative magnitude pruning (saliency policies in `policies.py`), then the k-means codebook
(`codebook.py`, the stage's `codebook` option)."""
from compressor.algorithms.prune.stage import PruneConfig, PruneStage

__all__ = ["PruneConfig", "PruneStage"]
