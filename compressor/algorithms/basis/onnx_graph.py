"""ONNX for basis stacks: the K coefficient sets stored once, each step's weights formed in the graph.

Queiruga et al. (docs/ALGORITHMS.md §4): theta(t_j) = sum_a phi_a(t_j) theta_a. A `BasisStack` computes all steps'
tensors as one matrix product ``phi (n x K) @ coef (K x width)`` followed by slices; the exporter keeps that
product when ``coef`` is larger than its constant-folding limit. `make_onnx_rewrite` checks it and names the node
``basis/<stack>/weighted_sum``; where the exporter folded the product (a small stack), the folded dense tensors
are found by value and replaced with our own MatMul / Slice / Reshape nodes over the coefficient initializer,
so the file never holds per-step copies and its size falls with K.

`make_int8_rewrite` (quantize after basis): each parameter slice of a coefficient matrix becomes an int8
initializer with one scale per coefficient set (symmetric, zero point 0) and a DequantizeLinear node; running
statistics stay float; each slice gets its own weighted sum (Einsum), read by Gather per step.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compressor.algorithms.basis.stack import VAR_FLOOR
from compressor.core.int8 import dequantize_rows, symmetric_int8
from compressor.errors import StageError

Rewrite = Callable[[onnx.ModelProto], onnx.ModelProto]


def _numel(shape) -> int:
    return int(np.prod(shape)) if len(shape) else 1


def _prepend(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    """Insert nodes that read only initializers before every other node (keeps topological order)."""
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old)


def _step_values(module) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    coef = module.coef.detach().float().cpu().numpy()
    phi = module.phi.detach().float().cpu().numpy()
    return coef, phi, (phi @ coef).astype(np.float32)


def _repair(graph: onnx.GraphProto, path: str, module) -> int:
    """Replace folded dense tensors of this stack with our nodes; returns how many were replaced."""
    coef, phi, rows = _step_values(module)
    pre = f"basis/{path}"
    cname, pname, rname = f"{path}.coef", f"{pre}/phi", f"{pre}/rows"
    nodes: list[onnx.NodeProto] = []
    replaced = 0
    slices = []
    start = 0
    for name, shape, _ in module.layout:
        size = _numel(shape)
        for j in range(module.n_steps):
            value = rows[j, start:start + size]
            if name.endswith("running_var"):
                value = np.maximum(value, VAR_FLOOR)
            slices.append((j, start, size, tuple(shape), name, value))
        start += size
    for init in list(graph.initializer):
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        arr = numpy_helper.to_array(init)
        target = None
        if arr.shape == rows.shape and np.allclose(arr, rows, rtol=1e-5, atol=1e-6):
            nodes.append(helper.make_node("Identity", [rname], [init.name], name=f"{pre}/rows_as_{init.name}"))
            target = True
        else:
            for j, s0, size, shape, name, value in slices:
                if arr.size == size and np.allclose(arr.reshape(-1), value, rtol=1e-5, atol=1e-6):
                    tag = f"{pre}/step{j}/{name}"
                    consts = [numpy_helper.from_array(np.array(v, np.int64), f"{tag}/{k}") for k, v in
                              (("starts", [j, s0]), ("ends", [j + 1, s0 + size]), ("shape", list(arr.shape)))]
                    graph.initializer.extend(consts)
                    nodes.append(helper.make_node("Slice", [rname, consts[0].name, consts[1].name], [f"{tag}/flat"],
                                                  name=f"{tag}/slice"))
                    out = init.name if not name.endswith("running_var") else f"{tag}/raw"
                    nodes.append(helper.make_node("Reshape", [f"{tag}/flat", consts[2].name], [out],
                                                  name=f"{tag}/reshape"))
                    if name.endswith("running_var"):
                        floor = numpy_helper.from_array(np.array(VAR_FLOOR, np.float32), f"{tag}/floor")
                        graph.initializer.append(floor)
                        nodes.append(helper.make_node("Max", [out, floor.name], [init.name], name=f"{tag}/clamp"))
                    target = True
                    break
        if target:
            graph.initializer.remove(init)
            replaced += 1
    if replaced:
        graph.initializer.extend([numpy_helper.from_array(coef, cname), numpy_helper.from_array(phi, pname)])
        nodes.insert(0, helper.make_node("MatMul", [pname, cname], [rname], name=f"{pre}/weighted_sum"))
        _prepend(graph, nodes)
    return replaced


def make_onnx_rewrite(modules: list[tuple[str, object]]) -> Rewrite:
    """The fp32 rewrite for the stacks `modules` ((path, BasisStack) pairs) of the exported model."""

    def rewrite(proto: onnx.ModelProto) -> onnx.ModelProto:
        graph = proto.graph
        for path, module in modules:
            cname = f"{path}.coef"
            if any(i.name == cname for i in graph.initializer):
                users = [n for n in graph.node if cname in n.input]
                if len(users) != 1 or users[0].op_type not in ("MatMul", "Gemm"):
                    raise StageError(f"basis: the exported graph uses {cname} in an unexpected way "
                                     f"({', '.join(n.op_type for n in users) or 'unused'})")
                users[0].name = f"basis/{path}/weighted_sum"
                continue
            if not _repair(graph, path, module):
                raise StageError(f"basis: the exported ONNX graph holds neither the coefficients of {path} nor "
                                 "their folded step weights")
        _drop_unused_initializers(graph)
        return proto

    return rewrite


def _const(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    init = next((i for i in graph.initializer if i.name == name), None)
    if init is not None:
        return numpy_helper.to_array(init)
    node = next((n for n in graph.node if n.op_type == "Constant" and name in n.output), None)
    return None if node is None else numpy_helper.to_array(node.attribute[0].t)


def _segment_reads(graph: onnx.GraphProto, rows: str, bounds: dict[tuple[int, int], int]):
    """[(slice node, step j, segment i)] for every read of the step-weight matrix `rows`, or None if a read is
    not a (step, segment) slice: Gather(rows, j) -> Slice(s:e) (the exporter) or Slice(rows, [j,s]:[j+1,e])."""
    reads = []
    for node in graph.node:
        if rows not in node.input:
            continue
        if node.op_type == "Gather" and node.input[0] == rows:
            j = _const(graph, node.input[1])
            users = [n for n in graph.node if node.output[0] in n.input]
            if j is None or j.size != 1 or not users:
                return None
            for user in users:
                if user.op_type != "Slice" or len(user.input) < 3:
                    return None
                start, end = _const(graph, user.input[1]), _const(graph, user.input[2])
                key = None if start is None or end is None else (int(start.reshape(-1)[0]), int(end.reshape(-1)[0]))
                if key not in bounds:
                    return None
                reads.append((user, int(j.reshape(-1)[0]), bounds[key]))
        elif node.op_type == "Slice" and node.input[0] == rows:
            start, end = _const(graph, node.input[1]), _const(graph, node.input[2])
            if start is None or end is None or start.size != 2:
                return None
            key = (int(start[1]), int(end[1]))
            if key not in bounds:
                return None
            reads.append((node, int(start[0]), bounds[key]))
        elif node.op_type not in ("MatMul", "Gemm"):
            return None
    return reads


def make_int8_rewrite(modules: list[tuple[str, object]]) -> Rewrite:
    """Coefficient matrices -> int8 slices + scales and DequantizeLinear; each slice's step weights are an Einsum
    of its own (ONNX Runtime's quantizer, run next for the ordinary layers, leaves Einsum and Gather-of-Einsum
    alone; a Concat of the slices would be requantized per tensor, mixing weights with running statistics)."""

    def rewrite(proto: onnx.ModelProto) -> onnx.ModelProto:
        graph = proto.graph
        for path, module in modules:
            cname = f"{path}.coef"
            init = next((i for i in graph.initializer if i.name == cname), None)
            product = next((n for n in graph.node if n.op_type in ("MatMul", "Gemm") and cname in n.input), None)
            if init is None or product is None:
                raise StageError(f"basis: int8 rewrite cannot find the coefficients {cname} in the graph")
            coef = numpy_helper.to_array(init).astype(np.float32)
            pre = f"basis/{path}/int8"
            segments, start = [], 0
            for name, shape, kind in module.layout:
                segments.append((name, start, _numel(shape), kind))
                start += _numel(shape)
            bounds = {(s0, s0 + size): i for i, (_, s0, size, _) in enumerate(segments)}
            reads = _segment_reads(graph, product.output[0], bounds)
            nodes, parts = [], []
            for name, s0, size, kind in segments:
                seg = np.ascontiguousarray(coef[:, s0:s0 + size])
                tag = f"{pre}/{name}"
                if kind == "buffer":  # running statistics stay float
                    graph.initializer.append(numpy_helper.from_array(seg, f"{tag}/float"))
                    parts.append(f"{tag}/float")
                    continue
                q, scale = symmetric_int8(seg)
                dequantize, column = dequantize_rows(f"{tag}/q", scale, f"{tag}/deq", f"{tag}/dequantize")
                graph.initializer.extend([numpy_helper.from_array(q, f"{tag}/q"), column])
                nodes += dequantize
                parts.append(f"{tag}/deq")
            graph.initializer.remove(init)
            phi = product.input[0]
            if reads is None:  # an unexpected read of the step weights: one matrix, as in the fp32 graph
                nodes.append(helper.make_node("Concat", parts, [cname], name=f"{pre}/concat", axis=1))
                _prepend(graph, nodes)
                continue
            for i, part in enumerate(parts):
                nodes.append(helper.make_node("Einsum", [phi, part], [f"{part}/steps"], name=f"{part}/weighted_sum",
                                              equation="ij,jk->ik"))
            for j in sorted({j for _, j, _ in reads}):
                graph.initializer.append(numpy_helper.from_array(np.array(j, np.int64), f"{pre}/step{j}"))
            for node, j, i in reads:
                out = node.output[0]
                node.ClearField("input")
                node.ClearField("attribute")
                node.input.extend([f"{parts[i]}/steps", f"{pre}/step{j}"])
                node.op_type = "Gather"
                node.attribute.append(helper.make_attribute("axis", 0))
                del node.output[:]
                node.output.append(out)
            dead = {product.output[0]}
            keep = []
            for node in graph.node:
                if node is product or (node.input and node.input[0] in dead and node.op_type == "Gather"):
                    dead.update(node.output)
                    continue
                keep.append(node)
            del graph.node[:]
            graph.node.extend(keep)
            _prepend(graph, nodes)
        _drop_unused_initializers(graph)
        return proto

    return rewrite


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
