"""Public API: `load(out_dir)` rebuilds the compressed model from `model.safetensors`.

The architecture comes from the module passed in (`model=`), else from the source recorded at compression time:
the `.pt2` program or the TorchScript file (data, read by torch's own loaders, only if its sha256 still
matches). An `--arch` factory is code: its name in the metadata is shown, never imported or called, unless the
caller opts in with `trust_code=True` (a crafted artifact must not run code on load); a pickled source needs
`trust_pickle=True`. Structural stages (RPG ring, basis stacks) register (in `compressor.registry`, by
structure kind) the rebuild that restores their compressed form before the weights are loaded. Every malformed
artifact raises `ArtifactError` naming the file.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.errors import ArtifactError, CompressorError
from compressor.io.archive import quiet_loaders, zip_names
from compressor.io.arch import resolve_arch
from compressor.io.hf.files import POOLING_MODES
from compressor.io.hf.load import AUTO_CLASSES
from compressor.io.hf.load import rebuild as rebuild_hf
from compressor.io.load import file_sha256, load_state_dict_into, source_sha256
from compressor.io.pt2_check import load_program, load_torchscript
from compressor.io.safetensors_io import check_onnx, read_weights
from compressor.registry import structure_handler

SOURCE_FIELDS = ("format", "path", "sha256", "arch", "cwd")


def source_record(loaded) -> dict[str, Any]:
    arch = loaded.arch
    if arch and ":" in arch and arch.rpartition(":")[0].endswith(".py"):
        file, _, attr = arch.rpartition(":")
        arch = f"{os.path.abspath(file)}:{attr}"
    record = {"format": loaded.format, "path": os.path.abspath(loaded.source), "sha256": loaded.sha256,
              "arch": arch, "cwd": os.getcwd() if arch and not arch.rpartition(":")[0].endswith(".py") else None}
    return record if loaded.hf is None else {**record, "hf": loaded.hf.record}


def _import_arch(source: dict[str, Any], file: Path) -> nn.Module:
    """Opted-in only: import and call the recorded factory, with its cwd importable during the import only."""
    arch, cwd = source.get("arch"), source.get("cwd")
    if not isinstance(arch, str):
        raise ArtifactError(f"{file}: the metadata names no architecture for its state_dict source")
    saved = list(sys.path)
    if cwd and cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return resolve_arch(arch)
    finally:
        sys.path[:] = saved


def _rebuild_hf(source: dict[str, Any], file: Path, trust_code: bool) -> nn.Module:
    """A Hugging Face model's wrapper from the config.json written beside the artifact (else the source
    directory's, while its files are unchanged): built-in transformers classes only, unless `trust_code`."""
    record = source.get("hf")
    if not (isinstance(record, dict) and record.get("task") in AUTO_CLASSES and isinstance(record.get("inputs"), list)
            and isinstance(record.get("model_dir"), str) and ".." not in Path(record["model_dir"]).parts
            and isinstance(record.get("pooling"), list) and set(map(str, record["pooling"])) <= set(POOLING_MODES)):
        raise ArtifactError(f"{file}: malformed Hugging Face record in the metadata")
    config_dir = file.parent
    if not (config_dir / "config.json").is_file():
        path = Path(source.get("path") or "")
        if not path.is_dir() or source_sha256(path) != source.get("sha256"):
            raise ArtifactError(f"{file}: no config.json beside it and the source directory {path} is gone or "
                                "changed; pass the architecture: compressor.load(dir, model=...)")
        config_dir = path / record["model_dir"]
    return rebuild_hf(record, config_dir, trust_remote_code=trust_code)


def rebuild_architecture(source: dict[str, Any], file: Path, trust_pickle: bool = False,
                         trust_code: bool = False) -> nn.Module:
    """A fresh module of the source architecture (its weights are overwritten by the caller)."""
    if not all(isinstance(source.get(k), (str, type(None))) for k in SOURCE_FIELDS):
        raise ArtifactError(f"{file}: malformed source record in the metadata")
    fmt = source.get("format")
    if fmt == "state_dict":
        if not trust_code:
            raise ArtifactError(f"{file}: rebuilding needs the architecture {source.get('arch')!r} named in its "
                                "metadata (code, not run by default); pass model=... or trust_code=True")
        return _import_arch(source, file)
    path = Path(source.get("path") or "")
    if fmt == "hf":
        return _rebuild_hf(source, file, trust_code)
    if not path.is_file():
        raise ArtifactError(f"{file}: the source model {path} is gone; pass the architecture: "
                            "compressor.load(dir, model=...)")
    if file_sha256(path) != source.get("sha256"):
        raise ArtifactError(f"{file}: the source model {path} changed since compression (sha256 differs); "
                            "pass the architecture: compressor.load(dir, model=...)")
    if fmt == "pt2":  # checked as on the way in: archive limits, and nothing in it runs code unless trusted
        return load_program(path, trust_pickle).module()
    if fmt == "torchscript":
        return load_torchscript(path)
    if fmt == "pickle":
        if not trust_pickle:
            raise ArtifactError(f"{file}: the source {path} is a pickled module; pass trust_pickle=True to "
                                "rebuild from it")
        zip_names(path)
        return torch.load(str(path), map_location="cpu", weights_only=False)
    raise ArtifactError(f"{file}: unknown source format {fmt!r} in the metadata")


def load(path: str | Path, model: nn.Module | None = None, trust_pickle: bool = False,
         trust_code: bool = False) -> nn.Module:
    """Rebuild the compressed model saved in `path` (an output directory or its model.safetensors).

    Verifies the checksums of every stored tensor, of the metadata and (for a directory) of model.onnx.
    `model`: a module of the source architecture (needed for a state_dict source unless `trust_code=True`).
    `trust_code`: allow importing and calling the `--arch` factory named in the metadata (runs code).
    `trust_pickle`: allow unpickling a pickled source module (runs code).
    Raises `compressor.ArtifactError`, its message naming the file, for every malformed artifact.
    """
    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    weights, meta = read_weights(file, lazily=True)
    structures = meta.get("structures", [])
    # decoded one at a time into a model built here, so a misfit found midway leaves no caller's model half loaded;
    # all at once for the caller's `model` or when a structure (ring, basis stacks) is rebuilt from them first
    one_at_a_time = model is None and not structures
    state = weights if one_at_a_time else weights.decoded()
    if path.is_dir():
        check_onnx(file, meta, path / "model.onnx")
    try:
        if model is None:
            with quiet_loaders():
                model = rebuild_architecture(meta.get("source", {}), file, trust_pickle, trust_code)
        model = rebuild_structures(model, structures, state, file)
        load_state_dict_into(model, state, str(file), one_at_a_time)
    except ArtifactError:
        raise
    except (CompressorError, Exception) as exc:
        why = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(f"{file}: cannot rebuild the model ({why.replace(str(file) + ': ', '')})") from exc
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
