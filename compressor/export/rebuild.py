"""Public API: `load(out_dir)` rebuilds the compressed model from `model.safetensors`.

The architecture comes from the source recorded at compression time (the `.pt2` program, the `--arch`
factory, the TorchScript file) unless a module is passed in; structural stages (RPG ring, basis stacks)
register (in `compressor.registry`, by structure kind) the rebuild that restores their compressed form before
the weights are loaded.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.errors import ArtifactError
from compressor.io.load import file_sha256, load_state_dict_into, resolve_arch
from compressor.io.safetensors_io import read_weights
from compressor.registry import structure_handler



def source_record(loaded) -> dict[str, Any]:
    arch = loaded.arch
    if arch and ":" in arch and arch.rpartition(":")[0].endswith(".py"):
        file, _, attr = arch.rpartition(":")
        arch = f"{os.path.abspath(file)}:{attr}"
    return {"format": loaded.format, "path": os.path.abspath(loaded.source), "sha256": loaded.sha256,
            "arch": arch, "cwd": os.getcwd() if arch and not arch.rpartition(":")[0].endswith(".py") else None}


def rebuild_architecture(source: dict[str, Any], trust_pickle: bool = False) -> nn.Module:
    """A fresh module of the source architecture (its weights are overwritten by the caller)."""
    fmt = source.get("format")
    if fmt == "state_dict":
        if source.get("cwd") and source["cwd"] not in sys.path:
            sys.path.insert(0, source["cwd"])
        return resolve_arch(source["arch"])
    path = Path(source.get("path", ""))
    if not path.is_file():
        raise ArtifactError(f"the source model {path} is gone; pass the architecture: compressor.load(dir, model=...)")
    if file_sha256(path) != source.get("sha256"):
        raise ArtifactError(f"the source model {path} changed since compression (sha256 differs); "
                            "pass the architecture: compressor.load(dir, model=...)")
    if fmt == "pt2":
        return torch.export.load(str(path)).module()
    if fmt == "torchscript":
        return torch.jit.load(str(path), map_location="cpu")
    if fmt == "pickle":
        if not trust_pickle:
            raise ArtifactError(f"the source {path} is a pickled module; pass trust_pickle=True to rebuild from it")
        return torch.load(str(path), map_location="cpu", weights_only=False)
    raise ArtifactError(f"unknown source format {fmt!r} in the metadata")


def load(path: str | Path, model: nn.Module | None = None, trust_pickle: bool = False) -> nn.Module:
    """Rebuild the compressed model saved in `path` (an output directory or its model.safetensors)."""
    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    state, meta = read_weights(file)
    if model is None:
        model = rebuild_architecture(meta.get("source", {}), trust_pickle)
    model = rebuild_structures(model, meta.get("structures", []), state, file)
    load_state_dict_into(model, state, str(file))
    try:
        model.eval()
    except NotImplementedError:
        pass
    return model


def rebuild_structures(model: nn.Module, structures: list[dict[str, Any]], state: dict, file: Path) -> nn.Module:
    """Restore each structure record's compressed form (ring, basis stacks) on the source model, in order."""
    for entry in structures:
        handler = structure_handler(entry.get("kind"))
        if handler is None:
            raise ArtifactError(f"{file}: unknown structure {entry.get('kind')!r}; is a plugin missing?")
        model = handler.rebuild(model, entry, state)
    return model
