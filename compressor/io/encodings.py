"""Lossless tensor encodings for `model.safetensors` (byte layout documented in docs/encodings.md).

Each tensor is stored in the smallest of:
- ``dense``: the tensor itself, under its own name;
- ``bitpack``: a boolean tensor (e.g. an RPG prune mask) as ``NAME::bits``, 8 flags per byte, LSB first;
- ``bitmask``: ``NAME::bitmask`` (uint8, the row-major non-zero mask packed 8 per byte, least significant bit
  first) + ``NAME::values`` (the non-zeros in row-major order, original dtype);
- ``codebook``: ``NAME::bitmask`` + ``NAME::codebook`` (float32, the distinct non-zero values, at most 2^bits)
  + ``NAME::indices`` (uint8, one ``bits``-wide codebook index per non-zero, packed least significant first).
  Used only when the tensor really holds that few distinct values (after weight sharing, see
  `compressor.algorithms.prune.codebook`), so the encoding is exact: Deep Compression's (Han et al., ICLR 2016) storage format.
Metadata records each tensor's encoding, shape and dtype; decoding is exact for every encoding.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from compressor.errors import ArtifactError
from compressor.io.int8_encoding import decode_int8

HEADER_COST = 96  # approximate bytes of safetensors header per stored tensor
CODEBOOK_BITS = (1, 2, 4, 8)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    bits = np.packbits(mask.reshape(-1).numpy().astype(np.uint8), bitorder="little")
    return torch.from_numpy(bits)


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    return torch.from_numpy(np.unpackbits(packed.numpy(), count=n, bitorder="little").astype(bool))


def pack_indices(idx: np.ndarray, bits: int) -> torch.Tensor:
    """Pack small unsigned integers `bits` wide into bytes, least significant first."""
    per = 8 // bits
    pad = (-len(idx)) % per
    idx = np.concatenate([idx.astype(np.uint8), np.zeros(pad, np.uint8)]).reshape(-1, per)
    shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
    return torch.from_numpy(np.bitwise_or.reduce(idx << shifts, axis=1).astype(np.uint8))


def unpack_indices(packed: torch.Tensor, bits: int, n: int) -> np.ndarray:
    per = 8 // bits
    shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
    vals = (packed.numpy()[:, None] >> shifts) & np.uint8((1 << bits) - 1)
    return vals.reshape(-1)[:n]


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def encode_tensor(name: str, t: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The smallest exact encoding of one tensor."""
    dense = ({name: t}, {"encoding": "dense"})
    if t.dtype == torch.bool and t.numel() >= 64:
        return {f"{name}::bits": pack_bits(t)}, {"encoding": "bitpack", "shape": list(t.shape), "dtype": "bool"}
    if not t.is_floating_point() or t.numel() < 64 or _dtype_name(t) not in DTYPES:
        return dense
    n, el = t.numel(), t.element_size()
    flat = t.reshape(-1)
    mask = flat != 0
    nnz = int(mask.sum())
    values = flat[mask]
    best_size, best = n * el, dense
    meta = {"shape": list(t.shape), "dtype": _dtype_name(t), "nnz": nnz}
    bitmask_size = math.ceil(n / 8) + nnz * el + HEADER_COST
    if bitmask_size < best_size:
        best_size = bitmask_size
        best = ({f"{name}::bitmask": pack_bits(mask), f"{name}::values": values.clone()},
                {"encoding": "bitmask", **meta})
    if nnz:  # more than 256 distinct values among the first 4096 rules the codebook out without sorting them all
        head = torch.unique(values[:4096])
        uniq = head if head.numel() > 256 else torch.unique(values)
        if uniq.numel() <= 256 and torch.equal(uniq.to(torch.float32).to(t.dtype), uniq):
            bits = next(b for b in CODEBOOK_BITS if uniq.numel() <= (1 << b))
            size = math.ceil(n / 8) + 4 * uniq.numel() + math.ceil(nnz * bits / 8) + 2 * HEADER_COST
            if size < best_size:
                idx = torch.searchsorted(uniq, values).numpy()
                best = ({f"{name}::bitmask": pack_bits(mask), f"{name}::codebook": uniq.to(torch.float32),
                         f"{name}::indices": pack_indices(idx, bits)},
                        {"encoding": "codebook", "bits": bits, **meta})
    return best


def decode_tensor(name: str, rec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    enc = rec.get("encoding")
    if enc == "dense":
        return tensors[name]
    if enc == "bitpack":
        return unpack_bits(tensors[f"{name}::bits"], math.prod(rec["shape"])).reshape(rec["shape"])
    shape, dtype = rec["shape"], DTYPES[rec["dtype"]]
    if enc == "int8":
        return decode_int8(name, rec, tensors, dtype)
    n = math.prod(shape)
    mask = unpack_bits(tensors[f"{name}::bitmask"], n)
    if enc == "bitmask":
        values = tensors[f"{name}::values"]
    elif enc == "codebook":
        idx = unpack_indices(tensors[f"{name}::indices"], int(rec["bits"]), int(mask.sum()))
        values = tensors[f"{name}::codebook"][torch.from_numpy(idx.astype(np.int64))].to(dtype)
    else:
        raise ValueError(f"unknown encoding {enc!r} for {name}")
    out = torch.zeros(n, dtype=dtype)
    out[mask] = values.to(dtype)
    return out.reshape(shape)


def encode_state(state: dict[str, torch.Tensor],
                 enabled: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    tensors: dict[str, torch.Tensor] = {}
    records: dict[str, dict] = {}
    for name, t in state.items():
        parts, rec = encode_tensor(name, t) if enabled else ({name: t}, {"encoding": "dense"})
        tensors.update(parts)
        records[name] = rec
    return tensors, records


def decode_state(tensors: dict[str, torch.Tensor], records: dict[str, dict]) -> dict[str, torch.Tensor]:
    try:
        return {name: decode_tensor(name, rec, tensors) for name, rec in records.items()}
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise ArtifactError(f"model.safetensors: cannot decode tensor ({type(exc).__name__}: {exc})") from exc


def entropy_bound_bytes(t: torch.Tensor) -> float:
    """Shannon bound for storing the tensor: binary entropy of the zero mask plus the empirical entropy of the
    non-zero values (each distinct value a symbol), in bytes."""
    flat = t.reshape(-1)
    n = flat.numel()
    nnz = int((flat != 0).sum())
    p = nnz / n if n else 0.0
    h_mask = 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
    values = flat[flat != 0]
    if nnz:
        _, counts = torch.unique(values, return_counts=True)
        q = counts.double() / nnz
        h_vals = float(-(q * torch.log2(q)).sum())
    else:
        h_vals = 0.0
    return (n * h_mask + nnz * h_vals) / 8.0
