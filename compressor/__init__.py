"""compressor: make a pretrained PyTorch model small, and prove on held-out data what it cost.

Public API: `load(out_dir, model=None, trust_code=False)` rebuilds a compressed model (it never runs code named
in the artifact unless `trust_code=True`; a malformed artifact raises `ArtifactError`, naming the file);
`compress(RunOptions)` runs a pipeline (`-> (report, exit_code)`).
"""
from compressor.errors import ArtifactError
from compressor.export.rebuild import load
from compressor.run.runner import compress
from compressor.version import __version__

__all__ = ["ArtifactError", "__version__", "compress", "load"]
