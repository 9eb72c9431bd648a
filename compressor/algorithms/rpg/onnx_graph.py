"""ONNX graph rewrites for a ring (RPG) model: the file holds only the ring, the index map is built in-graph.

The exporter writes a `RingModel`'s index map as two constant tensors of T entries (`rpg_slots`, int64, and
`rpg_signs`, float) — larger than the weights they replace. `generate_index_map_in_graph` swaps them for our own
nodes computing, for k = Range(0, max(T, 65536)) (see `MIN_INDEX_LENGTH`):

    slot(k) = (a*k + b) mod N                                        (Mul, Add, Mod)
    s(k)    = 1 - 2*(fmix32((k + o) mod 2^32) >> 31), o seeded      (Add, Mod, Div, BitwiseXor, Mul, Sub, Cast)

(Wang et al., WACV 2023 generate W_l = c_l * s * A[pi_l]; docs/ALGORITHMS.md §3 gives this index map). The hash is
murmur3's finaliser in int64 arithmetic that cannot overflow (`compressor.algorithms.rpg.sign_hash`); BitwiseXor
needs ai.onnx opset >= 18, which the rewrite checks (and raises an older import to).
The nodes are added after export and optimisation, so no constant folding materialises them in the file.

A prune mask (exported as a bool constant of T bytes) is stored as packed bits and unpacked in-graph. Batch norms
after generated convs are folded into them (the exporter only folds into constant weights) and value_info is
dropped, so the graph's overhead stays within the size goal of 1.1 x 4 x DoF bytes + 16 KB.
`ring_to_int8` stores the ring as int8 rows of `RING_INT8_BLOCK` slots with one scale per row and dequantizes it
in-graph (DequantizeLinear, axis 0), for quantize (`compressor.algorithms.rpg.ring_int8`).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compressor.algorithms.rpg.ring import MASK_NAME, RING_NAME, RingLayout, SIGNS_NAME, SLOTS_NAME
from compressor.algorithms.rpg.ring_int8 import quantize_ring
from compressor.core.int8 import dequantize_rows
from compressor.algorithms.rpg.sign_hash import BITWISE_XOR_OPSET, CONSTANTS, onnx_sign_spec
from compressor.errors import StageError

PREFIX = "rpg_gen/"


def _pop_initializer(graph: onnx.GraphProto, name: str) -> onnx.TensorProto:
    for i, init in enumerate(graph.initializer):
        if init.name == name:
            del graph.initializer[i]
            return init
    raise StageError(f"rpg: the exported ONNX graph has no {name!r} tensor to rewrite (the exporter folded or "
                     "renamed it); the ring cannot be stored alone")


def _prepend(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + rest)


def _int64(graph: onnx.GraphProto, name: str, value: int) -> str:
    graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=np.int64), PREFIX + name))
    return PREFIX + name


def index_map_nodes(graph: onnx.GraphProto, layout: RingLayout, slots_out: str, signs_out: str) -> list:
    """Nodes computing slot(k) into `slots_out` (int64) and s(k) into `signs_out` (float), k < index_length."""
    c = {name: _int64(graph, name, v) for name, v in {
        **CONSTANTS, "zero": 0, "T": layout.index_length, "a": layout.a, "b": layout.b, "N": layout.n,
        "soff": layout.sign_offset}.items()}
    p = PREFIX
    spec = [
        ("Range", [c["zero"], c["T"], c["one"]], "k", {}),
        # slot(k) = (a*k + b) mod N
        ("Mul", ["k", c["a"]], "ak", {}),
        ("Add", ["ak", c["b"]], "akb", {}),
        ("Mod", ["akb", c["N"]], "@slots", {"fmod": 0}),
        *onnx_sign_spec("k", c["soff"], c),
        ("Cast", ["sign_int"], "@signs", {"to": TensorProto.FLOAT}),
    ]
    outputs = {"@slots": slots_out, "@signs": signs_out}
    nodes = []
    for i, (op, inputs, out, attrs) in enumerate(spec):
        ins = [x if x.startswith(p) else p + x for x in inputs]
        nodes.append(helper.make_node(op, ins, [outputs.get(out, p + out)], name=f"{p}{i:02d}_{op}", **attrs))
    return nodes


def require_opset(proto: onnx.ModelProto, version: int) -> None:
    """Refuse a graph whose default-domain opset import is below `version` (the exporter writes 20; BitwiseXor of
    the sign hash needs 18). Raising the import in place could silently reinterpret ops that changed meaning."""
    entry = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if entry < version:
        raise StageError(f"rpg: the exported graph imports ONNX opset {entry}; the in-graph sign hash (BitwiseXor) "
                         f"needs opset >= {version}")


def generate_index_map_in_graph(proto: onnx.ModelProto, layout: RingLayout) -> onnx.ModelProto:
    """Replace the exported `rpg_slots` / `rpg_signs` constants by in-graph integer arithmetic."""
    require_opset(proto, BITWISE_XOR_OPSET)
    graph = proto.graph
    slots = _pop_initializer(graph, SLOTS_NAME)
    signs = _pop_initializer(graph, SIGNS_NAME)
    for t in (slots, signs):
        if list(t.dims) != [layout.index_length]:
            raise StageError(f"rpg: exported {t.name} has shape {list(t.dims)}, expected [{layout.index_length}]")
    nodes = index_map_nodes(graph, layout, SLOTS_NAME, SIGNS_NAME)
    if any(i.name == MASK_NAME for i in graph.initializer):
        nodes += packed_mask_nodes(graph, _pop_initializer(graph, MASK_NAME), PREFIX + "k")
    _prepend(graph, nodes)
    fold_batch_norms_into_generated_convs(graph)
    del graph.value_info[:]  # optional shape annotations (ONNX Runtime infers them): ~8 KB on a small ResNet
    return proto


def fold_batch_norms_into_generated_convs(graph: onnx.GraphProto) -> int:
    """Fold an inference BatchNormalization into the Conv before it when the Conv's weight is generated in-graph.

    The exporter folds batch norm into constant conv weights, but not into generated ones, which leaves four
    per-channel tensors and a node per layer. With s = gamma / sqrt(var + eps): W' = W * s (per output channel, one
    Mul) and bias' = beta + (bias - mean) * s. Returns the number of folded layers.
    """
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    producer = {out: node for node in graph.node for out in node.output}
    graph_outputs = {o.name for o in graph.output}
    folded, drop_nodes, replaced = 0, [], set()
    for bn in list(graph.node):
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1 or len(bn.input) != 5:
            continue
        if any(a.name == "training_mode" and a.i for a in bn.attribute) or not all(n in inits for n in bn.input[1:]):
            continue
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or len(consumers.get(conv.output[0], [])) != 1:
            continue
        if conv.output[0] in graph_outputs or conv.input[1] in inits or len(consumers[conv.input[1]]) != 1:
            continue
        if len(conv.input) > 2 and conv.input[2] and conv.input[2] not in inits:
            continue
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:])
        scale = gamma / np.sqrt(var + eps)
        bias = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) \
            if len(conv.input) > 2 and conv.input[2] else np.zeros_like(mean)
        rank = _rank_of(graph, conv.input[1], producer, inits)
        if rank is None:
            continue
        base = bn.input[1].rpartition(".")[0] or bn.name
        names = (f"{base}.fold_scale", f"{base}.fold_bias", f"{conv.input[1]}_bn")
        graph.initializer.extend([
            numpy_helper.from_array(scale.astype(np.float32).reshape([-1] + [1] * (rank - 1)), names[0]),
            numpy_helper.from_array((beta + (bias - mean) * scale).astype(np.float32), names[1])])
        mul = helper.make_node("Mul", [conv.input[1], names[0]], [names[2]], name=f"{PREFIX}fold_{base}")
        graph.node.insert(list(graph.node).index(conv), mul)
        conv.input[1] = names[2]
        if len(conv.input) > 2 and conv.input[2]:
            replaced.add(conv.input[2])
        if len(conv.input) > 2:
            conv.input[2] = names[1]
        else:
            conv.input.append(names[1])
        conv.output[0] = bn.output[0]
        drop_nodes.append(bn)
        replaced.update(bn.input[1:])
        folded += 1
    for node in drop_nodes:
        graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    keep = [i for i in graph.initializer if i.name in used or i.name not in replaced]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return folded


def _rank_of(graph: onnx.GraphProto, name: str, producer: dict, inits: dict) -> int | None:
    """Rank of a generated weight: from the Reshape that makes it, else from value_info."""
    node = producer.get(name)
    if node is not None and node.op_type == "Reshape" and node.input[1] in inits:
        return int(numpy_helper.to_array(inits[node.input[1]]).size)
    for vi in graph.value_info:
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return None


def packed_mask_nodes(graph: onnx.GraphProto, mask: onnx.TensorProto, k: str) -> list[onnx.NodeProto]:
    """Store a prune mask (bool [T]) as packed bits (uint8 [T/8]) and unpack it in-graph:

        keep(k) = (bytes[k div 8] >> (k mod 8)) & 1        (Div, Gather, Mod, Cast, BitShift, BitwiseAnd, Cast)
    """
    bits = numpy_helper.to_array(mask).astype(bool).reshape(-1)
    p = PREFIX
    graph.initializer.extend([
        numpy_helper.from_array(np.packbits(bits, bitorder="little"), p + "mask_bits"),
        numpy_helper.from_array(np.array(8, dtype=np.int64), p + "eight"),
        numpy_helper.from_array(np.array(1, dtype=np.uint8), p + "one_u8")])
    spec = [("Div", [k, p + "eight"], p + "byte_index", {}),
            ("Gather", [p + "mask_bits", p + "byte_index"], p + "byte", {"axis": 0}),
            ("Mod", [k, p + "eight"], p + "bit_index", {"fmod": 0}),
            ("Cast", [p + "bit_index"], p + "bit_index_u8", {"to": TensorProto.UINT8}),
            ("BitShift", [p + "byte", p + "bit_index_u8"], p + "shifted", {"direction": "RIGHT"}),
            ("BitwiseAnd", [p + "shifted", p + "one_u8"], p + "keep_u8", {}),
            ("Cast", [p + "keep_u8"], MASK_NAME, {"to": TensorProto.BOOL})]
    return [helper.make_node(op, ins, [out], name=f"{p}mask_{i}_{op}", **attrs)
            for i, (op, ins, out, attrs) in enumerate(spec)]


def ring_to_int8(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Store the ring as int8 rows with one scale per row; Cast + Mul (`core/int8.dequantize_rows`: folded once per
    session) + Reshape + Slice restore `rpg_ring` in-graph, exactly as
    `compressor.algorithms.rpg.ring_int8.dequantize_ring` does in torch."""
    graph = proto.graph
    ring = numpy_helper.to_array(_pop_initializer(graph, RING_NAME)).astype(np.float32)
    q, scales = quantize_ring(ring)
    p = PREFIX
    dequantize, column = dequantize_rows(RING_NAME + "_int8", scales, p + "ring_rows", p + "dequantize_ring")
    graph.initializer.extend([
        numpy_helper.from_array(q, RING_NAME + "_int8"), column,
        numpy_helper.from_array(np.array([-1], dtype=np.int64), p + "ring_flat"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), p + "ring_start"),
        numpy_helper.from_array(np.array([ring.size], dtype=np.int64), p + "ring_end")])
    _prepend(graph, [
        *dequantize,
        helper.make_node("Reshape", [p + "ring_rows", p + "ring_flat"], [p + "ring_padded"], name=p + "ring_reshape"),
        helper.make_node("Slice", [p + "ring_padded", p + "ring_start", p + "ring_end"], [RING_NAME],
                         name=p + "ring_slice")])
    return proto
