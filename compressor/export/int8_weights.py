"""The int8 weights of a quantized ONNX graph, matched back to the module's parameters for `model.safetensors`.

ONNX Runtime's quantizer stores weight ``W`` as ``W_quantized`` (int8, or uint8 for an asymmetric Gather table)
with ``W_scale`` and ``W_zero_point``; per-channel along the ``axis`` of the DequantizeLinear that reads it (QDQ)
or the output columns of a MatMulInteger (dynamic), along the output channels of a ConvInteger. The exporter
names a Linear's transposed weight after nothing in the module (``val_12``), so each int8 tensor is matched by
value: the parameter (same shape, or the transpose of a matrix) within its quantization step everywhere.
A MatMulNBits weight (ONNX Runtime's contrib op: ``B`` uint8 [N, blocks, block * bits / 8], 4 bits: two values a
byte, the first in the low nibble; zero point 2^(bits-1) unless given; ``scales`` one per block of ``block_size``
input rows) is unpacked to [K, N] with block-wise scales along K.

The structures' own int8 tensors (`compressor.export.onnx.compact_int8`) are found by the graph's form, not by
value: the rpg ring (int8 rows of ``block`` slots, one scale per row: DequantizeLinear axis 0, Reshape [-1], Slice
[0, n] to the ring's own name) becomes the flat ring with one scale per ``block`` slots (the block-wise `int8`
encoding, padding dropped); a basis stack's coefficients (``basis/<path>/int8/<slice>/q`` with one scale per
coefficient set, or ``.../float`` for running statistics) are placed back at their column offsets in
``<path>.coef`` -- one scale per ``block`` columns (the gcd of the slices' widths) of each row, when every slice is
int8. `compact_values` gives the float32 values the graph computes for each of them, int8 slices dequantized as
DequantizeLinear does ((q - zero point) * scale) and float slices as they are.
"""
from __future__ import annotations

import math
import re

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from compressor.io.int8_encoding import Int8Weight

SUFFIX = "_quantized"
BASIS_SLICE = re.compile(r"^basis/(?P<path>.+)/int8/(?P<slice>.+)/(?P<kind>q|float)$")  # basis/onnx_graph.py


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


def _attr(node: onnx.NodeProto, name: str, default: int | None = None) -> int | None:
    return next((a.i for a in node.attribute if a.name == name), default)


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


def _step(w: Int8Weight) -> torch.Tensor:
    if w.block is not None:
        return w.expanded(w.scale.to(torch.float32)).abs()  # MatMulNBits scales may be negative
    if w.axis is None or w.scale.numel() <= 1:
        return w.scale.to(torch.float32)
    view = [1] * w.q.ndim
    view[w.axis] = -1
    return w.scale.to(torch.float32).reshape(view)


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

def _graph_maps(model: onnx.ModelProto) -> tuple[dict[str, onnx.TensorProto], dict[str, list[onnx.NodeProto]]]:
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return {i.name: i for i in model.graph.initializer}, consumers


def _const(inits: dict[str, onnx.TensorProto], name: str) -> np.ndarray | None:
    return numpy_helper.to_array(inits[name]) if name in inits else None


def _dequantize_node(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto],
                     axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(q int8 2-D, scale [rows], zero point [rows]) of a per-row DequantizeLinear (`axis` 0) of initializers."""
    if node.op_type != "DequantizeLinear" or len(node.input) < 2 or _attr(node, "axis", 1) != axis:
        return None
    q, scale = _const(inits, node.input[0]), _const(inits, node.input[1])
    if q is None or scale is None or q.dtype != np.int8 or q.ndim != 2:
        return None
    zp = _const(inits, node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(scale.shape, np.int8)
    if zp is None or zp.dtype != np.int8:
        return None
    if _attr(node, "block_size", 0) or scale.shape != (q.shape[0],) or zp.shape != scale.shape:
        return None
    return q, scale.astype(np.float32), zp


def _only(consumers: dict[str, list[onnx.NodeProto]], name: str, op: str) -> onnx.NodeProto | None:
    nodes = consumers.get(name, [])
    return nodes[0] if len(nodes) == 1 and nodes[0].op_type == op else None


def _ring_rows(node: onnx.NodeProto, inits, consumers, state) -> tuple[str, Int8Weight] | None:
    """DequantizeLinear(axis 0) -> Reshape [-1] -> Slice [0, n] -> a 1-D state tensor of n values: that tensor as
    one scale per row of slots, the padding of the last row dropped."""
    reshape = _only(consumers, node.output[0], "Reshape")
    cut = _only(consumers, reshape.output[0], "Slice") if reshape is not None and len(reshape.input) > 1 else None
    if cut is None or len(cut.input) < 3 or cut.output[0] not in state or state[cut.output[0]].ndim != 1:
        return None  # the common case, an ordinary weight's DequantizeLinear, ends here before reading any tensor
    name, n = cut.output[0], state[cut.output[0]].numel()
    flat, start, end = (_const(inits, x) for x in (reshape.input[1], cut.input[1], cut.input[2]))
    axes = _const(inits, cut.input[3]) if len(cut.input) > 3 and cut.input[3] else np.zeros(1, np.int64)
    steps = _const(inits, cut.input[4]) if len(cut.input) > 4 and cut.input[4] else np.ones(1, np.int64)
    if any(c is None for c in (flat, start, end, axes, steps)) or flat.tolist() != [-1]:
        return None
    if start.tolist() != [0] or end.tolist() != [n] or axes.tolist() != [0] or steps.tolist() != [1]:
        return None
    rows = _dequantize_node(node, inits, 0)
    if rows is None or not rows[0].size - rows[0].shape[1] < n <= rows[0].size:
        return None
    q, scale, zp = rows
    return name, Int8Weight(torch.from_numpy(q.reshape(-1)[:n].copy()), torch.from_numpy(scale.copy()),
                            torch.from_numpy(zp.copy()), 0, int(q.shape[1]), 8)


def _basis_slices(inits, consumers) -> dict[str, list[tuple[str, Int8Weight | torch.Tensor]]]:
    """<path> -> its coefficient slices in the graph's order: an int8 slice as Int8Weight (one scale per row),
    a float slice as its tensor."""
    stacks: dict[str, list[tuple[str, Int8Weight | torch.Tensor]]] = {}
    for name, init in inits.items():
        m = BASIS_SLICE.match(name)
        if m is None:
            continue
        if m["kind"] == "float":
            value: Int8Weight | torch.Tensor | None = torch.from_numpy(numpy_helper.to_array(init).astype(np.float32))
        else:
            node = _only(consumers, name, "DequantizeLinear")
            rows = _dequantize_node(node, inits, 0) if node is not None else None
            value = None if rows is None else Int8Weight(*(torch.from_numpy(a.copy()) for a in rows), 0)
        stacks.setdefault(m["path"], []).append((m["slice"], value))
    return {path: pieces for path, pieces in stacks.items()
            if all(v is not None and (v.q if isinstance(v, Int8Weight) else v).ndim == 2 for _, v in pieces)}


def _width(piece: Int8Weight | torch.Tensor) -> int:
    return (piece if isinstance(piece, torch.Tensor) else piece.q).shape[1]


def _slice_fits(piece: Int8Weight | torch.Tensor, cols: torch.Tensor) -> bool:
    """A float slice equals its columns; an int8 one is within its quantization step of them."""
    if isinstance(piece, torch.Tensor):
        return tuple(piece.shape) == tuple(cols.shape) and torch.equal(piece, cols)
    if tuple(piece.q.shape) != tuple(cols.shape):
        return False
    return bool(((piece.dequantize() - cols).abs() <= 1.01 * _step(piece) + 1e-12).all())


def _place(pieces: list, coef: torch.Tensor, start: int = 0, used: tuple[int, ...] = ()) -> list[int] | None:
    """The order of the slices that tiles the columns of `coef` (each matching its columns), preferring the
    graph's order."""
    if start == coef.shape[1]:
        return [] if len(used) == len(pieces) else None
    for i, (_, piece) in enumerate(pieces):
        width = _width(piece)
        if i in used or start + width > coef.shape[1] or not _slice_fits(piece, coef[:, start:start + width]):
            continue
        rest = _place(pieces, coef, start + width, used + (i,))
        if rest is not None:
            return [i] + rest
    return None


def _coefficients(pieces: list, coef: torch.Tensor) -> tuple[torch.Tensor, Int8Weight | None] | None:
    """(the coefficient matrix the graph computes, its int8 form when every slice is int8)."""
    shapes = [tuple((p if isinstance(p, torch.Tensor) else p.q).shape) for _, p in pieces]
    if coef.ndim != 2 or any(r != coef.shape[0] for r, _ in shapes) or sum(w for _, w in shapes) != coef.shape[1]:
        return None
    order = _place(pieces, coef.detach().to(torch.float32))
    if order is None:
        return None
    ordered = [pieces[i][1] for i in order]
    values = torch.cat([p if isinstance(p, torch.Tensor) else p.dequantize() for p in ordered], dim=1)
    if any(isinstance(p, torch.Tensor) for p in ordered):
        return values, None  # a float slice (running statistics) has no int8 form
    block = math.gcd(*(p.q.shape[1] for p in ordered))
    repeat = [p.q.shape[1] // block for p in ordered]
    blocked = [torch.cat([p.scale.reshape(-1, 1).expand(-1, r) for p, r in zip(ordered, repeat)], dim=1),
               torch.cat([p.zero_point.reshape(-1, 1).expand(-1, r) for p, r in zip(ordered, repeat)], dim=1)]
    weight = Int8Weight(torch.cat([p.q for p in ordered], dim=1), blocked[0].contiguous(), blocked[1].contiguous(),
                        1, block, 8)
    return values, weight


def structured_int8(model: onnx.ModelProto, state: dict[str, torch.Tensor]) -> dict[str, Int8Weight | torch.Tensor]:
    """State name -> the structures' int8 form in `model` (an Int8Weight), or the float32 values the graph
    computes where the tensor mixes int8 and float slices (a basis stack with running statistics)."""
    inits, consumers = _graph_maps(model)
    found: dict[str, Int8Weight | torch.Tensor] = {}
    for node in model.graph.node:
        ring = _ring_rows(node, inits, consumers, state) if node.op_type == "DequantizeLinear" else None
        if ring is not None and ring[0] not in found:
            name, weight = ring
            if _slice_fits(weight, state[name].detach().to(torch.float32)):
                found[name] = weight
    for path, pieces in _basis_slices(inits, consumers).items():
        name = f"{path}.coef"
        if name in state and name not in found and state[name].is_floating_point():
            coef = _coefficients(pieces, state[name])
            if coef is not None:
                found[name] = coef[1] if coef[1] is not None else coef[0]
    return found


def compact_values(model: onnx.ModelProto, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """State name -> the float32 values the graph computes for each of the structures' compact tensors."""
    return {name: w.dequantize() if isinstance(w, Int8Weight) else w
            for name, w in structured_int8(model, state).items()}
