"""The `int8` encoding of `model.safetensors`: a weight stored as ONNX Runtime quantized it (docs/encodings.md,
"int8").

Stored tensors: ``NAME::q`` (int8, or uint8 for an asymmetric table, in the module's own layout),
``NAME::scale`` (float32, one per channel along ``axis`` or a scalar for per-tensor) and ``NAME::zero_point``
(same dtype as ``q``; only when some zero point is not 0). A sparse weight (after prune; symmetric int8 keeps zeros
exactly 0) stores ``NAME::bitmask`` (uint8, the non-zero mask packed 8 per byte, least significant bit first, as
for `bitmask`) and only the non-zero ``NAME::q`` values, when that is smaller (``sparse: true``). Decoding is ONNX's DequantizeLinear,
``w = (q - zero_point) * scale`` in float32, so `compressor.load` rebuilds exactly the weights the int8 ONNX graph
computes with (dequantize-on-load).

A block-wise weight (quantize's MatMulNBits) records ``bits`` (4 or 8) and ``block``: with 4 bits ``NAME::q4`` holds
the values (-8..7, two's complement nibbles, two per byte, the first in the low nibble, flattened in the module's
layout), with 8 ``NAME::q`` (int8); ``NAME::scale`` one scale per ``block`` consecutive elements along ``axis`` (the scale tensor has the
weight's shape with that dimension divided by ``block``, rounded up), as ONNX's blocked DequantizeLinear (opset 21).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import math

import numpy as np
import torch

QDTYPES = {"int8": torch.int8, "uint8": torch.uint8}


@dataclass
class Int8Weight:
    """One weight as the int8 graph holds it, already in the module's layout (transposed back if need be)."""

    q: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    axis: int | None
    block: int | None = None  # block-wise: `block` consecutive elements along `axis` share a scale
    bits: int = 8  # 4: values in [-8, 7], stored two a byte

    def expanded(self, t: torch.Tensor) -> torch.Tensor:
        """A block-wise scale or zero point repeated to the weight's shape."""
        index = torch.div(torch.arange(self.q.shape[self.axis]), self.block, rounding_mode="floor")
        return t.index_select(self.axis, index)  # memory of the weight's size, whatever `block` says

    def dequantize(self) -> torch.Tensor:
        scale, zp = self.scale.to(torch.float32), self.zero_point.to(torch.float32)
        if self.block is not None:
            scale, zp = self.expanded(scale), self.expanded(zp)
        elif self.axis is not None and scale.numel() > 1:
            view = [1] * self.q.ndim
            view[self.axis] = -1
            scale, zp = scale.reshape(view), zp.reshape(view)
        return (self.q.to(torch.float32) - zp) * scale


def blocked_scale_shape(shape: list[int], axis: int, block: int) -> list[int]:
    out = list(shape)
    out[axis] = -(-out[axis] // block)
    return out


def _encode_blocked(name: str, weight: Int8Weight, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor],
                                                                                 dict[str, Any]]:
    tensors = {f"{name}::scale": weight.scale.to(torch.float32).contiguous()}
    if weight.bits == 4:
        flat = weight.q.reshape(-1).to(torch.int16).numpy()
        nibbles = (flat & 0xF).astype(np.uint8)
        if nibbles.size % 2:
            nibbles = np.append(nibbles, np.uint8(0))
        tensors[f"{name}::q4"] = torch.from_numpy((nibbles[0::2] | (nibbles[1::2] << 4)).copy())
    else:
        tensors[f"{name}::q"] = weight.q.to(torch.int8).contiguous()
    if bool((weight.zero_point != 0).any()):
        tensors[f"{name}::zero_point"] = weight.zero_point.to(torch.int8).contiguous()
    record = {"encoding": "int8", "bits": weight.bits, "block": weight.block, "shape": list(weight.q.shape),
              "dtype": str(dtype).replace("torch.", ""), "qdtype": "int8", "axis": weight.axis, "sparse": False}
    return tensors, record


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _decode_blocked(name: str, rec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Int8Weight:
    shape, axis, block = rec.get("shape"), rec.get("axis"), rec.get("block")
    if not isinstance(shape, list) or not shape or not all(_is_int(d) and d >= 0 for d in shape):
        raise ValueError(f"{name}: shape {shape!r} is not a list of sizes")
    if not _is_int(axis) or not _is_int(block) or block < 1 or not -len(shape) <= axis < len(shape):
        raise ValueError(f"{name}: a block-wise weight needs a block size and an axis in range, got {block}, {axis}")
    axis = axis % len(shape)
    n = math.prod(shape)
    if rec["bits"] == 4:
        packed = tensors[f"{name}::q4"]
        if packed.dtype != torch.uint8 or packed.numel() != -(-n // 2):
            raise ValueError(f"{name}::q4 holds {packed.numel()} {packed.dtype} values, {n} values need "
                             f"{-(-n // 2)} uint8")
        packed = packed.numpy()
        nibbles = np.stack([packed & 0xF, packed >> 4], axis=1).reshape(-1)[:n].astype(np.int8)
        q = torch.from_numpy(np.where(nibbles > 7, nibbles - 16, nibbles).astype(np.int8).reshape(shape))
    else:
        q = tensors[f"{name}::q"]
        if q.dtype != torch.int8 or list(q.shape) != shape:
            raise ValueError(f"{name}::q is {q.dtype} {list(q.shape)}, the metadata says int8 {shape}")
    scale = tensors[f"{name}::scale"]
    if not scale.is_floating_point() or list(scale.shape) != blocked_scale_shape(shape, axis, block):
        raise ValueError(f"{name}::scale is {list(scale.shape)}, blocks of {block} along axis {axis} of {shape} "
                         f"need {blocked_scale_shape(shape, axis, block)}")
    zp = tensors.get(f"{name}::zero_point", torch.zeros_like(scale, dtype=torch.int8))
    return Int8Weight(q, scale, zp.reshape(scale.shape), axis, block, int(rec["bits"]))


def encode_int8(name: str, weight: Int8Weight, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if weight.block is not None:
        return _encode_blocked(name, weight, dtype)
    tensors = {f"{name}::q": weight.q.contiguous(), f"{name}::scale": weight.scale.to(torch.float32).contiguous()}
    record = {"encoding": "int8", "shape": list(weight.q.shape), "dtype": str(dtype).replace("torch.", ""),
              "qdtype": str(weight.q.dtype).replace("torch.", ""), "axis": weight.axis, "sparse": False}
    if bool((weight.zero_point != 0).any()):
        tensors[f"{name}::zero_point"] = weight.zero_point.to(weight.q.dtype).contiguous()
    else:
        flat = weight.q.reshape(-1)
        mask = flat != 0
        if -(-flat.numel() // 8) + int(mask.sum()) < flat.numel():
            bits = np.packbits(mask.numpy().astype(np.uint8), bitorder="little")
            tensors.update({f"{name}::bitmask": torch.from_numpy(bits), f"{name}::q": flat[mask].clone()})
            record["sparse"] = True
    return tensors, record


def decode_int8(name: str, rec: dict[str, Any], tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    if rec.get("block") is not None:
        if rec.get("bits") not in (4, 8):
            raise ValueError(f"{name}: a block-wise weight has 4 or 8 bits, not {rec.get('bits')}")
        return _decode_blocked(name, rec, tensors).dequantize().to(dtype)
    q = tensors[f"{name}::q"]
    if rec.get("sparse"):
        n = int(np.prod(rec["shape"]))
        mask = np.unpackbits(tensors[f"{name}::bitmask"].numpy(), count=n, bitorder="little").astype(bool)
        dense = torch.zeros(n, dtype=q.dtype)
        dense[torch.from_numpy(mask)] = q
        q = dense.reshape(rec["shape"])
    if q.dtype != QDTYPES[rec["qdtype"]] or list(q.shape) != list(rec["shape"]):
        raise ValueError(f"{name}::q is {q.dtype} {list(q.shape)}, the metadata says {rec['qdtype']} {rec['shape']}")
    scale = tensors[f"{name}::scale"]
    zp = tensors.get(f"{name}::zero_point", torch.zeros_like(scale, dtype=q.dtype))
    axis = rec.get("axis")
    if axis is not None and not -q.ndim <= int(axis) < q.ndim:
        raise ValueError(f"{name}: axis {axis} out of range for shape {list(q.shape)}")
    return Int8Weight(q, scale, zp, None if axis is None else int(axis)).dequantize().to(dtype)
