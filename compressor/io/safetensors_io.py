"""`model.safetensors`: the final weights, each tensor in its chosen encoding, with JSON metadata.

Metadata key ``compressor`` holds a JSON object: ``format_version``, ``source`` (how to rebuild the
architecture), ``stages`` (names and configs), ``encodings`` (tensor name -> encoding record), ``aliases``
(tied weights stored once) and ``checksums``. Encodings live in `compressor.io.encodings`; "dense" stores the
tensor as is.

Integrity (format 2): ``checksums.tensors`` is the sha256 of each stored tensor's raw bytes, ``checksums.header``
the sha256 of the canonical JSON (sorted keys, no spaces) of every other metadata field, and ``checksums.onnx``
the sha256 of the model.onnx written beside it. `read_weights` verifies them before decoding, so a flipped byte,
a re-valued tensor or an edited record is refused instead of loading wrong weights. A checksum detects
corruption, not tampering (a crafted file can recompute it): that is why loading never runs code named in the
metadata (`compressor.io.reload`). Every malformed input raises `ArtifactError` naming the file.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from compressor.errors import ArtifactError, OutputError
from compressor.io.encodings import decode_state, encode_state
from compressor.io.int8_encoding import Int8Weight, encode_int8

META_KEY = "compressor"
FORMAT_VERSION = 2


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


def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of a tensor's bytes as safetensors stores them (row-major, native little-endian)."""
    return hashlib.sha256(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def header_sha256(header: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of every metadata field except the checksums themselves."""
    body = {k: v for k, v in header.items() if k != "checksums"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def save_weights(state: dict[str, torch.Tensor], path: Path, meta: dict[str, Any],
                 encode: bool = True, onnx_sha256: str | None = None,
                 int8: dict[str, Int8Weight] | None = None) -> dict[str, dict]:
    """Encode and write atomically, with checksums; returns the encoding record of each tensor. `int8`: weights
    stored as the quantized graph holds them (encoding "int8") instead of their float values."""
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
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    header = json.loads(json.dumps({"format_version": FORMAT_VERSION, **meta, "encodings": records,
                                    "aliases": aliases}, default=str))
    header["checksums"] = {"tensors": {k: tensor_sha256(v) for k, v in tensors.items()},
                           "header": header_sha256(header), **({"onnx": onnx_sha256} if onnx_sha256 else {})}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(header, sort_keys=True)})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from exc
        if type(exc).__name__ == "SafetensorError" and "I/O error" in str(exc):  # safetensors' own write error
            raise OutputError(f"{path}: cannot write ({str(exc).split('I/O error:')[-1].strip()})") from exc
        raise
    return records


def _read_raw(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    if not path.is_file():
        raise ArtifactError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw_meta = (fh.metadata() or {}).get(META_KEY)
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for a damaged file
        why = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(f"{path}: not a readable safetensors file ({why})") from exc
    if raw_meta is None:
        raise ArtifactError(f"{path}: no compressor metadata; it was not written by compressor")
    return tensors, raw_meta


def _parse_meta(path: Path, raw_meta: str) -> dict[str, Any]:
    try:
        meta = json.loads(raw_meta)
    except ValueError as exc:
        raise ArtifactError(f"{path}: the compressor metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise ArtifactError(f"{path}: the compressor metadata is a {type(meta).__name__}, not an object")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ArtifactError(f"{path}: format_version {version!r} is not a format version")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{path}: written by a newer compressor (format {version}; this one reads "
                            f"{FORMAT_VERSION}): upgrade compressor")
    if version < FORMAT_VERSION or "checksums" not in meta:
        raise ArtifactError(f"{path}: written by an older compressor (format {version}, no checksums): "
                            "re-run compress")
    return meta


def _verify(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Checksums first (any corruption is named as such), then the shape of every field the decoder reads."""
    sums = meta["checksums"]
    if not (isinstance(sums, dict) and isinstance(sums.get("tensors"), dict) and isinstance(sums.get("header"), str)):
        raise ArtifactError(f"{path}: malformed checksums in the metadata")
    if header_sha256(meta) != sums["header"]:
        raise ArtifactError(f"{path}: the metadata fails its checksum (file corrupt or edited)")
    expected = sums["tensors"]
    if set(expected) != set(tensors):
        odd = sorted(set(expected) ^ set(tensors))[0]
        raise ArtifactError(f"{path}: tensor {odd} is {'missing' if odd in expected else 'not expected'} "
                            "(file corrupt or edited)")
    for name, t in tensors.items():
        if tensor_sha256(t) != expected[name]:
            raise ArtifactError(f"{path}: tensor {name} fails its checksum (file corrupt)")
    kinds = {"encodings": dict, "aliases": dict, "structures": list, "source": dict}
    for key, kind in kinds.items():
        if not isinstance(meta.get(key, kind()), kind):
            raise ArtifactError(f"{path}: metadata field {key!r} is not a {kind.__name__}")
    if not all(isinstance(r, dict) for r in meta.get("encodings", {}).values()):
        raise ArtifactError(f"{path}: an encoding record is not an object")
    if not all(isinstance(s, dict) for s in meta.get("structures", [])):
        raise ArtifactError(f"{path}: a structure record is not an object")


def read_weights(path: Path, lazily: bool = False) -> tuple[Mapping[str, torch.Tensor], dict[str, Any]]:
    """Verify every stored tensor, then decode them exactly; returns (state_dict, metadata). `lazily`: the state is a
    `DecodedWeights`, each tensor decoded when it is read. Raises `ArtifactError` naming the file for every
    malformed input."""
    tensors, raw_meta = _read_raw(path)
    meta = _parse_meta(path, raw_meta)
    _verify(path, tensors, meta)
    records, aliases = meta.get("encodings", {}), meta.get("aliases", {})
    for alias, target in aliases.items():
        if not isinstance(target, str) or target not in records or alias in records:
            raise ArtifactError(f"{path}: alias {alias!r} -> {target!r} names no stored tensor")
    weights = DecodedWeights(path, tensors, records, aliases)
    return (weights if lazily else weights.decoded()), meta


class DecodedWeights(Mapping):
    """A verified file's weights by name (tied aliases included), each decoded when it is read and not kept. Why: a
    caller that copies them into a model one at a time (`io.load.load_state_dict_into`) never holds every decoded
    weight beside the model's own (a BERT-base-sized int8 artifact: 0.44 GB of float32 at once otherwise)."""

    def __init__(self, path: Path, tensors: dict[str, torch.Tensor], records: dict[str, dict],
                 aliases: dict[str, str]) -> None:
        self.path, self.tensors, self.records, self.aliases = path, tensors, records, aliases

    def __getitem__(self, name: str) -> torch.Tensor:
        target = self.aliases.get(name, name)
        if target not in self.records:
            raise KeyError(name)
        try:
            return decode_state(self.tensors, {target: self.records[target]})[target]
        except Exception as exc:  # a record that passed its checksum yet does not decode: a crafted file
            raise ArtifactError(f"{self.path}: cannot decode the weights ({type(exc).__name__}: {exc})") from exc

    def decoded(self) -> dict[str, torch.Tensor]:
        """Every weight decoded, held at once (an alias is its target's tensor, tied as in the model)."""
        state = {name: self[name] for name in self.records}
        return state | {alias: state[target] for alias, target in self.aliases.items()}

    def __contains__(self, name: object) -> bool:  # by name: Mapping's own would decode the tensor to look
        return name in self.records or name in self.aliases

    def __iter__(self):
        return iter([*self.records, *self.aliases])

    def __len__(self) -> int:
        return len(self.records) + len(self.aliases)


def check_onnx(path: Path, meta: dict[str, Any], onnx_path: Path) -> None:
    """The model.onnx beside the weights is the one they were written with (sha256 recorded in the metadata)."""
    want = meta.get("checksums", {}).get("onnx")
    if want is None or not onnx_path.is_file():
        return
    digest = hashlib.sha256()
    with open(onnx_path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != want:
        raise ArtifactError(f"{onnx_path}: fails the checksum recorded in {path.name} (file corrupt or replaced)")
