"""The nodes quantize leaves out of ONNX Runtime's quantizer: those a user excludes by name, and those whose weights
the graph computes (an RPG ring's or a basis stack's generation, which ONNX Runtime folds once per session unless a
quantizer puts Q/DQ pairs on it)."""
from __future__ import annotations

import fnmatch

import onnx


def nodes_matching(model: onnx.ModelProto, patterns: tuple[str, ...]) -> list[str]:
    """Names of nodes whose name, or one of whose weight initializers' names, matches a pattern."""
    if not patterns:
        return []
    inits = {i.name for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        names = [node.name] + [i for i in node.input if i in inits]
        if any(fnmatch.fnmatchcase(n, p) for n in names for p in patterns):
            out.append(node.name)
    return out


WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def computed_weight_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of Conv/Gemm/MatMul nodes whose weight is computed in the graph (an RPG ring's or a basis stack's
    generated weights): quantizing those with ORT would add Q/DQ pairs around activations and weights that
    cost more bytes than they save, so they are left to the structure's own int8 rewrite."""
    inits = {i.name for i in model.graph.initializer}
    consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node
            if n.op_type in WEIGHTED_OPS and len(n.input) > 1 and n.input[1] not in inits | consts]


def constant_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes computed from initializers and constants only (a ring's or basis's weight generation):
    ONNX Runtime folds them once per session unless a quantizer puts Q/DQ pairs on them, so they stay float."""
    known = {i.name for i in model.graph.initializer} | {""}
    names = []
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        if node.op_type == "Constant" or all(i in known for i in node.input):
            known.update(node.output)
            if node.name:  # an unnamed node cannot be excluded by name (and "" would match every unnamed one)
                names.append(node.name)
    return names
