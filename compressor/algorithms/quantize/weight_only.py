"""int8 weight-only: a weighted node's constant weight stored int8 and dequantized in the graph, activations float.

Why: auto's last resort for a node whose activation range defeats int8 (static: calibrated range; dynamic: the
per-batch range of an outlier-heavy FFN input, docs/ALGORITHMS.md §5, Bondarenko et al. 2021) would otherwise be float,
which keeps all its bytes. Storing only the weight as int8 costs nothing in accuracy that matters — per-channel
weight rounding, no activation error — and keeps the file at int8 size. Written as standard ONNX (int8
initializer + per-axis DequantizeLinear, opset >= 13) with ONNX Runtime's names (``W_quantized``, ``W_scale``,
``W_zero_point``), so any runtime runs it and `model.safetensors` picks the int8 weight up like the others. A 2-D
MatMul weight is written as 8-bit MatMulNBits instead (stage.py): ONNX Runtime fuses DequantizeLinear + MatMul into
a MatMulNBits that quantizes the activations to int8 (accuracy level 4), which would defeat the point.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compressor.core.int8 import symmetric_int8


def _output_axis(node: onnx.NodeProto, ndim: int) -> int:
    """The weight axis of the node's output channels: one scale each."""
    if node.op_type == "MatMul":
        return ndim - 1
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 0  # Conv / ConvTranspose: [out, in/groups, k...] (ConvTranspose's is axis 1 per group; one per row is fine)


def _unique(base: str, taken: set[str]) -> str:
    """`base`, lengthened until none of it and its four derived names clash with a name in the graph."""
    suffixes = ("_quantized", "_scale", "_zero_point", "_dequantized", "_DequantizeLinear")
    while any(base + s in taken for s in suffixes):
        base += "_"
    taken.update(base + s for s in suffixes)
    return base


def int8_weight_only(model: onnx.ModelProto, nodes: list[str]) -> onnx.ModelProto:
    """`model` with the constant weight (input 1) of each named node stored int8 behind a DequantizeLinear."""
    if not nodes:
        return model
    wanted = set(nodes)
    inits = {i.name: i for i in model.graph.initializer}
    taken = set(inits) | {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    done: dict[tuple[str, bool], str] = {}  # (float initializer, stored transposed) -> dequantized tensor
    new_inits, new_nodes = [], []
    for node in model.graph.node:
        if node.name not in wanted or len(node.input) < 2 or node.input[1] not in inits:
            continue
        source = node.input[1]
        w = numpy_helper.to_array(inits[source]).astype(np.float32)
        transpose = node.op_type == "Gemm" and _output_axis(node, w.ndim) == 1
        if transpose:
            # B as [N, K] with transB=1: ORT fuses DequantizeLinear + a [K, N] B into an int8-activation MatMulNBits
            w = np.ascontiguousarray(w.T)
            attrs = [a for a in node.attribute if a.name != "transB"]
            del node.attribute[:]
            node.attribute.extend(attrs + [helper.make_attribute("transB", 1)])
        if (source, transpose) not in done:
            base = _unique(f"{source}_wo{'T' if transpose else ''}", taken)
            axis = _output_axis(node, w.ndim)
            rows = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
            q, scale = symmetric_int8(rows)
            q = np.moveaxis(q.reshape(np.moveaxis(w, axis, 0).shape), 0, axis)
            new_inits += [numpy_helper.from_array(np.ascontiguousarray(q), f"{base}_quantized"),
                          numpy_helper.from_array(scale, f"{base}_scale"),
                          numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{base}_zero_point")]
            new_nodes.append(helper.make_node("DequantizeLinear", [f"{base}_quantized", f"{base}_scale",
                                                                   f"{base}_zero_point"], [f"{base}_dequantized"],
                                              name=f"{base}_DequantizeLinear", axis=axis))
            done[(source, transpose)] = f"{base}_dequantized"
        node.input[1] = done[(source, transpose)]
    sources = {source for source, _ in done}
    used = {i for n in model.graph.node for i in n.input}
    kept = [i for i in model.graph.initializer if i.name in used or i.name not in sources]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + new_inits)
    nodes_now = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes + nodes_now)  # a DequantizeLinear of a constant has no inputs to wait for
    return model
