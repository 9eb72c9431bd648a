"""compressor: make a pretrained PyTorch model small, and prove on held-out data what it cost.

Public API: `load(out_dir)` rebuilds a compressed model; `compress(RunOptions)` runs a pipeline.
"""
__version__ = "0.1.0"

from compressor.api import load  # noqa: E402


def compress(*args, **kwargs):
    """Run a pipeline from Python: `compress(RunOptions(...)) -> (report, exit_code)`."""
    from compressor.runner import compress as _compress

    return _compress(*args, **kwargs)


__all__ = ["__version__", "compress", "load"]
