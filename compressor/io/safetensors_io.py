"""`model.safetensors`: the final weights, each tensor in its chosen encoding, with JSON metadata.

Metadata key ``compressor`` holds a JSON object: ``format_version``, ``source`` (how to rebuild the
architecture), ``stages`` (names and configs), ``encodings`` (tensor name -> encoding record) and ``aliases``
(tied weights stored once). Encodings live in `compressor.io.encodings`; "dense" stores the tensor as is.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from compressor.errors import ArtifactError
from compressor.io.encodings import decode_state, encode_state
from compressor.io.int8_encoding import Int8Weight, encode_int8

META_KEY = "compressor"
FORMAT_VERSION = 1


def dedupe_tied(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Store tensors that share storage once; return (unique tensors, alias -> stored name)."""
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...], tuple[int, ...]], str] = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        unique[name] = t
    return unique, aliases


def save_weights(state: dict[str, torch.Tensor], path: Path, meta: dict[str, Any],
                 encode: bool = True, int8: dict[str, Int8Weight] | None = None) -> dict[str, dict]:
    """Encode and write atomically; returns the encoding record of each tensor. `int8`: weights stored as the
    quantized graph holds them (encoding "int8") instead of their float values."""
    unique, aliases = dedupe_tied({k: v.detach().cpu() for k, v in state.items()})
    tensors, records = encode_state(unique, enabled=encode)
    for name, weight in (int8 or {}).items():  # int8 unless the exact encoding is smaller (a 4-bit codebook)
        if name not in unique:
            continue
        parts, record = encode_int8(name, weight, unique[name].dtype)
        exact = {k: v for k, v in tensors.items() if k == name or k.startswith(f"{name}::")}
        if sum(t.numel() * t.element_size() for t in parts.values()) < sum(
                t.numel() * t.element_size() for t in exact.values()):
            for k in exact:
                del tensors[k]
            tensors.update(parts)
            records[name] = record
    header = {"format_version": FORMAT_VERSION, **meta, "encodings": records, "aliases": aliases}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={META_KEY: json.dumps(header, sort_keys=True, default=str)})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
    return records


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Decode every tensor exactly; returns (state_dict, metadata)."""
    from safetensors import safe_open

    if not path.is_file():
        raise ArtifactError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw_meta = (fh.metadata() or {}).get(META_KEY)
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: not a readable safetensors file ({exc})") from exc
    if raw_meta is None:
        raise ArtifactError(f"{path}: no compressor metadata; it was not written by compressor")
    meta = json.loads(raw_meta)
    state = decode_state(tensors, meta.get("encodings", {}))
    for alias, target in meta.get("aliases", {}).items():
        state[alias] = state[target]
    return state, meta
