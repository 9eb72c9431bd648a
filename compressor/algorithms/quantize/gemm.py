"""Gemm -> MatMul + Add, so ONNX Runtime's dynamic quantizer can quantize a Linear layer.

The dynamic quantizer (`onnxruntime.quantization.quantize_dynamic`) only has integer kernels for the ops in its
IntegerOpsRegistry (MatMul, Conv, Gather, Attention, LSTM, ...); Gemm is not one of them, so a Linear layer that
the exporter wrote as Gemm would stay float under "dynamic int8" (a measured case: docs/ALGORITHMS.md §5). The
rewrite is exact:
Y = A @ B' + beta * C with B' = B^T when transB, as a MatMul (named as the Gemm was, so node lists still select it)
and an Add. Gemms with transA, alpha != 1, a non-constant B, or a computed C with beta != 1 are left as they are.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _rewritable(node: onnx.NodeProto, wanted: set[str] | None, inits: dict) -> bool:
    """A selected Gemm that MatMul + Add computes exactly: no transA, alpha 1, a constant B, and a constant C when
    beta != 1 (it is folded into the bias)."""
    if node.op_type != "Gemm" or (wanted is not None and node.name not in wanted):
        return False
    a = _attrs(node)
    has_c = len(node.input) > 2 and node.input[2] != ""
    return (not a.get("transA", 0) and a.get("alpha", 1.0) == 1.0 and len(node.input) >= 2
            and node.input[1] in inits and (not has_c or a.get("beta", 1.0) == 1.0 or node.input[2] in inits))


def gemms_as_matmul(model: onnx.ModelProto, names: list[str] | None = None) -> tuple[onnx.ModelProto, int]:
    """A copy of `model` with the Gemm nodes in `names` (None: every Gemm) rewritten as MatMul + Add; returns the
    copy and how many were rewritten."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    wanted = None if names is None else set(names)
    nodes, rewritten, replaced = [], 0, set()
    for node in graph.node:
        if not _rewritable(node, wanted, inits):
            nodes.append(node)
            continue
        a = _attrs(node)
        replaced.add(node.input[1])
        weight = numpy_helper.to_array(inits[node.input[1]])
        if a.get("transB", 0):
            weight = np.ascontiguousarray(weight.T)
        b_name = f"{node.input[1]}__matmul_{rewritten}"
        graph.initializer.append(numpy_helper.from_array(weight, b_name))
        has_c = len(node.input) > 2 and node.input[2] != ""
        product = f"{node.output[0]}__matmul" if has_c else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], b_name], [product], name=node.name))
        if has_c:
            bias, beta = node.input[2], float(a.get("beta", 1.0))
            if beta != 1.0:
                replaced.add(bias)
                bias = f"{bias}__beta_{rewritten}"
                scaled = numpy_helper.to_array(inits[node.input[2]]) * np.float32(beta)
                graph.initializer.append(numpy_helper.from_array(scaled.astype(np.float32), bias))
            nodes.append(helper.make_node("Add", [product, bias], [node.output[0]],
                                          name=f"{node.name or node.output[0]}__bias"))
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    # drop only the Gemm weights (and scaled biases' sources) this left unread; a subgraph (If/Loop body) may read
    # any other initializer of the outer graph without naming it in a top-level node's inputs
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in used or i.name not in replaced]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return out, rewritten
