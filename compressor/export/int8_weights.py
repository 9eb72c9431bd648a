"""The int8 weights of a quantized ONNX graph, matched back to the module's parameters for `model.safetensors`.

ONNX Runtime's quantizer stores weight ``W`` as ``W_quantized`` (int8, or uint8 for an asymmetric Gather table)
with ``W_scale`` and ``W_zero_point``; per-channel along the ``axis`` of the DequantizeLinear that reads it (QDQ)
or the output columns of a MatMulInteger (dynamic), along the output channels of a ConvInteger. The exporter
names a Linear's transposed weight after nothing in the module (``val_12``), so each int8 tensor is matched by
value: the parameter (same shape, or the transpose of a matrix) within its quantization step everywhere.
A MatMulNBits weight (ONNX Runtime's contrib op: ``B`` uint8 [N, blocks, block * bits / 8], 4 bits: two values a
byte, the first in the low nibble; zero point 2^(bits-1) unless given; ``scales`` one per block of ``block_size``
input rows) is unpacked to [K, N] with block-wise scales along K.

The structures' own int8 tensors (rpg ring, basis coefficients) are found by the graph's form in
`structured_int8.py`.
"""
from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from compressor.export.structured_int8 import attr_int as _attr
from compressor.export.structured_int8 import quantization_step as _step
from compressor.export.structured_int8 import structured_int8
from compressor.io.int8_encoding import Int8Weight

SUFFIX = "_quantized"


def _axis(q: np.ndarray, scale: np.ndarray, consumers: list[onnx.NodeProto]) -> int | None:
    if scale.size <= 1:
        return None
    for node in consumers:
        if node.op_type == "DequantizeLinear":
            return next((a.i for a in node.attribute if a.name == "axis"), 1) % q.ndim
    if any(n.op_type == "MatMulInteger" for n in consumers):
        return q.ndim - 1
    return 0


def graph_int8(model: onnx.ModelProto) -> list[Int8Weight]:
    """Every int8/uint8 weight with its scale and zero point, in the graph's layout."""
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    out = []
    for name, init in inits.items():
        base = name[: -len(SUFFIX)]
        if not name.endswith(SUFFIX) or f"{base}_scale" not in inits:
            continue
        q = numpy_helper.to_array(init)
        if q.dtype not in (np.int8, np.uint8):
            continue
        scale = numpy_helper.to_array(inits[f"{base}_scale"]).astype(np.float32)
        zp_init = inits.get(f"{base}_zero_point")
        zp = numpy_helper.to_array(zp_init) if zp_init is not None else np.zeros(scale.shape, q.dtype)
        shape = (-1,) if scale.size > 1 else ()
        out.append(Int8Weight(torch.from_numpy(q.copy()), torch.from_numpy(scale.reshape(shape)),
                              torch.from_numpy(zp.astype(q.dtype).reshape(shape)),
                              _axis(q, scale, consumers.get(name, []))))
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            weight = nbits_weight(node, inits)
            if weight is not None:
                out.append(weight)
    return out


def nbits_weight(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> Int8Weight | None:
    """The [K, N] weight of a 4- or 8-bit MatMulNBits node, or None for a form it does not decode (other widths,
    zero points given, a weight not stored as an initializer)."""
    bits = _attr(node, "bits", 4)  # the op's default
    if len(node.input) < 3 or node.input[1] not in inits or node.input[2] not in inits or bits not in (4, 8):
        return None
    if len(node.input) > 3 and node.input[3]:
        return None  # asymmetric: quantize writes symmetric 4-bit only
    k, n, block = _attr(node, "K"), _attr(node, "N"), _attr(node, "block_size")
    if k is None or n is None or block is None:
        return None
    packed = numpy_helper.to_array(inits[node.input[1]]).reshape(n, -1)
    values = np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(n, -1) if bits == 4 else packed
    q = (values[:, :k].astype(np.int16) - (1 << (bits - 1))).astype(np.int8).T.copy()
    scale = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32).reshape(n, -1).T.copy()
    return Int8Weight(torch.from_numpy(q), torch.from_numpy(scale), torch.zeros(scale.shape, dtype=torch.int8), 0,
                      block, bits)


def _transposed(w: Int8Weight) -> Int8Weight:
    scale, zp = (w.scale.T, w.zero_point.T) if w.block is not None else (w.scale, w.zero_point)
    return Int8Weight(w.q.T.contiguous(), scale, zp, None if w.axis is None else 1 - w.axis, w.block, w.bits)


def match_int8(model: onnx.ModelProto, state: dict[str, torch.Tensor]) -> dict[str, Int8Weight]:
    """Parameter name -> its int8 form in `model`, for each int8 weight whose parameter is found (an int8 tensor
    that is no parameter, e.g. a constant-folded slice, stays out)."""
    found = {name: w for name, w in structured_int8(model, state).items() if isinstance(w, Int8Weight)}
    by_numel: dict[int, list[str]] = {}
    for name, t in state.items():
        if t.is_floating_point() and name not in found:
            by_numel.setdefault(t.numel(), []).append(name)
    for weight in graph_int8(model):
        candidates = [weight] + ([_transposed(weight)] if weight.q.ndim == 2 else [])
        for name in by_numel.get(weight.q.numel(), []):
            if name in found:
                continue
            param = state[name].detach().to(torch.float32)
            match = next((c for c in candidates if tuple(c.q.shape) == tuple(param.shape)
                          and bool(((c.dequantize() - param).abs() <= 1.01 * _step(c) + 1e-12).all())), None)
            if match is not None:
                found[name] = match
                break
    return found


# ---- the structures' own int8 tensors (rpg ring, basis coefficients) --------------------------------------------
