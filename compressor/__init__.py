"""compressor: make a pretrained PyTorch model small, and prove on held-out data what it cost.

Public API: `load(out_dir)` rebuilds a compressed model; `compress(RunOptions)` runs a pipeline
(`-> (report, exit_code)`).
"""
from compressor.export.rebuild import load
from compressor.run.runner import compress
from compressor.version import __version__

__all__ = ["__version__", "compress", "load"]
