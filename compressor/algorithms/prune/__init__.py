"""prune: iterative magnitude pruning (saliency policies in `policies.py`), then the k-means codebook
(`codebook.py`, the stage's `codebook` option)."""
from compressor.algorithms.prune.config import PruneConfig
from compressor.algorithms.prune.stage import PruneStage

__all__ = ["PruneConfig", "PruneStage"]
