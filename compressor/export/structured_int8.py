"""The structures' own int8 tensors in a quantized graph (`compressor.export.onnx.compact_int8`), found by the
graph's form, not by value.

The rpg ring (int8 rows of ``block`` slots, one scale per row: a per-row dequantization, Reshape [-1], Slice
[0, n] to the ring's own name) becomes the flat ring with one scale per ``block`` slots (the block-wise `int8`
encoding, padding dropped); a basis stack's coefficients (``basis/<path>/int8/<slice>/q`` with one scale per
coefficient set, or ``.../float`` for running statistics) are placed back at their column offsets in
``<path>.coef`` -- one scale per ``block`` columns (the gcd of the slices' widths) of each row, when every slice is
int8. `compact_values` gives the float32 values the graph computes for each of them, int8 slices dequantized as
DequantizeLinear does ((q - zero point) * scale) and float slices as they are.
A per-row dequantization is DequantizeLinear (axis 0) or, as compressor writes it, Cast to float then Mul by a
[rows, 1] scale column (`compressor.core.int8.dequantize_rows`), the same values.
"""
from __future__ import annotations

import math
import re

import numpy as np
import onnx
import torch
from onnx import TensorProto, numpy_helper

from compressor.io.int8_encoding import Int8Weight

BASIS_SLICE = re.compile(r"^basis/(?P<path>.+)/int8/(?P<slice>.+)/(?P<kind>q|float)$")  # basis/onnx_graph.py


def quantization_step(w: Int8Weight) -> torch.Tensor:
    """One quantization step of each value of `w` (its scale, broadcast to the values' shape)."""
    if w.block is not None:
        return w.expanded(w.scale.to(torch.float32)).abs()  # MatMulNBits scales may be negative
    if w.axis is None or w.scale.numel() <= 1:
        return w.scale.to(torch.float32)
    view = [1] * w.q.ndim
    view[w.axis] = -1
    return w.scale.to(torch.float32).reshape(view)


def attr_int(node: onnx.NodeProto, name: str, default: int | None = None) -> int | None:
    return next((a.i for a in node.attribute if a.name == name), default)


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
    if node.op_type != "DequantizeLinear" or len(node.input) < 2 or attr_int(node, "axis", 1) != axis:
        return None
    q, scale = _const(inits, node.input[0]), _const(inits, node.input[1])
    if q is None or scale is None or q.dtype != np.int8 or q.ndim != 2:
        return None
    zp = _const(inits, node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(scale.shape, np.int8)
    if zp is None or zp.dtype != np.int8:
        return None
    if attr_int(node, "block_size", 0) or scale.shape != (q.shape[0],) or zp.shape != scale.shape:
        return None
    return q, scale.astype(np.float32), zp


def _only(consumers: dict[str, list[onnx.NodeProto]], name: str, op: str) -> onnx.NodeProto | None:
    nodes = consumers.get(name, [])
    return nodes[0] if len(nodes) == 1 and nodes[0].op_type == op else None


def _dequantized_output(node: onnx.NodeProto, consumers) -> str | None:
    """The tensor a per-row dequantization starting at `node` produces, read from the graph's shape only:
    DequantizeLinear, or Cast to float then Mul (core/int8.dequantize_rows); None for any other node."""
    if node.op_type == "DequantizeLinear":
        return node.output[0]
    if node.op_type == "Cast" and attr_int(node, "to") == TensorProto.FLOAT:
        mul = _only(consumers, node.output[0], "Mul")
        return None if mul is None else mul.output[0]
    return None


def _rows_of(node: onnx.NodeProto, inits, consumers) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(q int8 2-D, scale [rows], zero point [rows]) of a per-row dequantization of an initializer starting at
    `node` (either form of `_dequantized_output`)."""
    if node.op_type == "DequantizeLinear":
        return _dequantize_node(node, inits, 0)
    mul = _only(consumers, node.output[0], "Mul") if node.op_type == "Cast" else None
    if mul is None or len(mul.input) != 2:
        return None
    q = _const(inits, node.input[0])
    column = _const(inits, mul.input[1] if mul.input[0] == node.output[0] else mul.input[0])
    if q is None or column is None or q.dtype != np.int8 or q.ndim != 2 or column.shape != (q.shape[0], 1):
        return None
    return q, column.reshape(-1).astype(np.float32), np.zeros(q.shape[0], np.int8)


def _ring_rows(node: onnx.NodeProto, inits, consumers, state) -> tuple[str, Int8Weight] | None:
    """A per-row dequantization (`_dequantized_output`) -> Reshape [-1] -> Slice [0, n] -> a 1-D state tensor of n
    values: that tensor as one scale per row of slots, the padding of the last row dropped."""
    out = _dequantized_output(node, consumers)
    reshape = _only(consumers, out, "Reshape") if out is not None else None
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
    rows = _rows_of(node, inits, consumers)
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
            node = _only(consumers, name, "DequantizeLinear") or _only(consumers, name, "Cast")
            rows = _rows_of(node, inits, consumers) if node is not None else None
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
    return bool(((piece.dequantize() - cols).abs() <= 1.01 * quantization_step(piece) + 1e-12).all())


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
        ring = _ring_rows(node, inits, consumers, state) if node.op_type in ("DequantizeLinear", "Cast") else None
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
