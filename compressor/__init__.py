"""compressor: make a pretrained PyTorch model small, and prove on held-out data what it cost.

Public API (docs/api.md): `compress(model, data, pipeline=..., ...) -> CompressResult` runs a pipeline on a path or
an in-memory `nn.Module` and files or in-memory data (api.py); `load(out_dir, model=None, trust_code=False)`
rebuilds a compressed model (it never runs code named in the artifact unless `trust_code=True`; a malformed artifact
raises `ArtifactError`, naming the file).

`compress`, `CompressResult` and `load` are imported on first use, so the command line (`compress --help`, `diff`)
starts without torch.
"""
from compressor.errors import ArtifactError, CompressorError
from compressor.version import __version__

__all__ = ["ArtifactError", "CompressResult", "CompressorError", "__version__", "compress", "load"]


def __getattr__(name: str):
    """PEP 562: the public names that need torch, imported when first asked for."""
    if name in ("compress", "CompressResult"):
        from compressor import api

        return getattr(api, name)
    if name == "load":
        from compressor.io.reload import load

        return load
    raise AttributeError(f"module 'compressor' has no attribute {name!r}")
