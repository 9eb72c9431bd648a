"""quantize's 4-bit step: block-wise int4 weight-only MatMul weights, kept only where the check set allows it.

Why: int8 stores a weight in a quarter of its fp32 bytes and no less; a transformer's bytes are almost all in the
MatMul weights of its attention and feed-forward blocks, and those tolerate 4-bit weights when each block of
`block` consecutive input rows has its own scale (group-wise weight-only quantization: Frantar et al., "GPTQ",
ICLR 2023, and Lin et al., "AWQ", MLSys 2024, use groups of 128; llama.cpp's Q4_0 groups of 32), because the
activations stay float and only weight rounding error enters. ONNX Runtime's `MatMulNBitsQuantizer` writes them
as `com.microsoft.MatMulNBits` nodes (4 bits + one float scale per block: 0.625 bytes a weight at block 32,
0.156x fp32) that its CPU kernel runs directly. Symmetric, so a pruned zero stays exactly zero.

Which weights: all of them if the check-set output stays within the cosine bounds of the float graph; otherwise the
ones whose 4-bit rounding puts the largest error on their output over the check set's activations, ||X dW|| / ||X W||
(activation-aware, after AWQ), stay int8, in growing groups (1, 2, 4, ...), until it holds. Conv and Gemm nodes are not touched (the quantizer has no 4-bit form for them).
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from compressor.algorithms.quantize.auto import growing
from compressor.algorithms.quantize.auto import tried as tried_form
from compressor.algorithms.quantize.taps import tapped
from compressor.io.data import Dataset

LOGGER = "onnxruntime.quantization.matmul_nbits_quantizer"
ACTIVATION_ROWS = 4096  # check-set input rows per MatMul for the activation-aware order


def matmul_weight_names(model: onnx.ModelProto) -> dict[str, str]:
    """MatMul node name -> the name of its constant 2-D float32 weight [K, N]: the nodes that have a 4-bit form
    (read from the initializers' dims and type, no weight copied)."""
    inits = {i.name: i for i in model.graph.initializer}
    return {node.name: node.input[1] for node in model.graph.node
            if node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in inits
            and len(inits[node.input[1]].dims) == 2 and inits[node.input[1]].data_type == onnx.TensorProto.FLOAT}


def matmul_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """MatMul node name -> its constant 2-D weight [K, N] (`matmul_weight_names`)."""
    inits = {i.name: i for i in model.graph.initializer}
    return {node: numpy_helper.to_array(inits[w]) for node, w in matmul_weight_names(model).items()}


def int4_round(w: np.ndarray, block: int) -> np.ndarray:
    """W after symmetric 4-bit rounding with one scale per `block` rows of each column, scale = max|w| / 8 (ORT
    stores the signed extreme / -8, so its scale may be negative; the error is alike); only used to order nodes."""
    k, n = w.shape
    pad = (-k) % block
    blocks = np.pad(w.astype(np.float32), ((0, pad), (0, 0))).reshape(-1, block, n)
    scale = np.abs(blocks).max(axis=1, keepdims=True) / 8.0
    scale[scale == 0] = 1.0
    return (np.clip(np.rint(blocks / scale), -8, 7) * scale).reshape(-1, n)[:k]


def int4_error(w: np.ndarray, block: int, x: np.ndarray | None = None) -> float:
    """The relative error 4-bit rounding puts on the node's output, ||X (W - Wq)|| / ||X W|| over the check set's
    inputs X (activation-aware, as AWQ argues: a weight's error matters in proportion to the activations it meets;
    Lin et al. 2024), or ||W - Wq|| / ||W|| without them."""
    err, ref = int4_sums(w, block, x)
    return err ** 0.5 / max(ref ** 0.5, 1e-30)


def int4_sums(w: np.ndarray, block: int, x: np.ndarray | None = None) -> tuple[float, float]:
    """(||X (W - Wq)||^2, ||X W||^2) for the rows X (summed over batches: `int4_error` of the whole set), or
    (||W - Wq||^2, ||W||^2) when X is None or does not fit W. The products in float32 (they only order the nodes,
    and at BERT-base size float64 products were half of the 4-bit step's time), the sums in float64."""
    w = w.astype(np.float32, copy=False)
    delta = int4_round(w, block) - w
    if x is None or x.shape[-1] != w.shape[0]:
        return float(np.square(delta).sum(dtype=np.float64)), float(np.square(w).sum(dtype=np.float64))
    x = x.astype(np.float32, copy=False)
    return float(np.square(x @ delta).sum(dtype=np.float64)), float(np.square(x @ w).sum(dtype=np.float64))


def _nbits_module():
    """ONNX Runtime's MatMulNBits quantizer module, imported without its import-time `logging.basicConfig(INFO)`
    taking over the root logger (which would print every library's INFO and WARNING records on stderr)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        return importlib.import_module(LOGGER)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def own_weights(model: onnx.ModelProto, nodes: set[str], tag: str) -> onnx.ModelProto:
    """Give each of `nodes` a weight initializer of its own when another node reads the same one (shared layer
    weights, as in ALBERT): ORT's quantizer names the packed weight and scales after the initializer, so two
    quantizations of one weight (4-bit here, 8-bit there) would collide on those names."""
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in set(node.input):
            readers[name] = readers.get(name, 0) + 1
    inits = {i.name: i for i in model.graph.initializer}
    taken = set(inits) | {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    for node in model.graph.node:
        if node.name in nodes and len(node.input) > 1 and node.input[1] in inits and readers[node.input[1]] > 1:
            copy = f"{node.input[1]}__{tag}_{node.name}"
            while copy in taken:
                copy += "_"
            taken.add(copy)
            clone = onnx.TensorProto()
            clone.CopyFrom(inits[node.input[1]])
            clone.name = copy
            model.graph.initializer.append(clone)
            readers[node.input[1]] -= 1
            node.input[1] = copy
    return model


def write_nbits(src: Path, dst: Path, nodes: list[str], block: int, bits: int = 4) -> None:
    """`src` with the MatMul `nodes` turned into `bits`-bit MatMulNBits by ONNX Runtime's quantizer (symmetric,
    no accuracy_level: ORT's CPU kernel computes in float32), written to `dst`."""
    from onnxruntime.quantization import QuantFormat

    nbits = _nbits_module()
    DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer = nbits.DefaultWeightOnlyQuantConfig, nbits.MatMulNBitsQuantizer
    logger = logging.getLogger(LOGGER)
    level = logger.level
    logger.setLevel(logging.ERROR)  # it logs every node at INFO
    try:
        config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, quant_format=QuantFormat.QOperator,
                                              op_types_to_quantize=("MatMul",), bits=bits)
        model = own_weights(onnx.load(str(src)), set(nodes), f"{bits}b")
        others = [n.name for n in model.graph.node if n.name not in set(nodes)]  # its nodes_to_include only adds
        quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=others, algo_config=config)
        quantizer.process()
        quantizer.model.save_model_to_file(str(dst), False)
    finally:
        logger.setLevel(level)


def _candidates(work: Path, block: int, exclude: list[str],
                check: Dataset | None = None) -> tuple[list[str], dict[str, float]]:
    """The MatMul nodes with a 4-bit form, the largest output error from 4-bit rounding first (on the first
    ACTIVATION_ROWS rows of the check set's activations when given, streamed: taps.py): they are the first kept
    out."""
    model = onnx.load(str(work))
    inits = {i.name: i for i in model.graph.initializer}
    weights = {n: w for n, w in matmul_weight_names(model).items() if n not in exclude}
    names = list(weights)
    inputs = {n.name: (n.input[0], weights[n.name]) for n in model.graph.node if n.name in weights}
    sums = {n: [0.0, 0.0] for n in names}
    seen = set()
    if check is not None and names:
        for xs in tapped(model, [inputs[n][0] for n in names], check, max_rows=ACTIVATION_ROWS):
            for name in names:
                x = xs.get(inputs[name][0])
                if x is None:
                    continue
                seen.add(name)
                err, ref = int4_sums(numpy_helper.to_array(inits[inputs[name][1]]), block, x)
                sums[name][0] += err
                sums[name][1] += ref
    for name in set(names) - seen:  # no activations: the weight's own error
        sums[name] = list(int4_sums(numpy_helper.to_array(inits[inputs[name][1]]), block))
    errors = {n: s[0] ** 0.5 / max(s[1] ** 0.5, 1e-30) for n, s in sums.items()}
    return sorted(names, key=lambda n: (-errors[n], n)), errors


def force_int4(work: Path, dst: Path, block: int, exclude: list[str]) -> list[str]:
    """weight_bits=4: every MatMul weight (less `exclude`) 4-bit, unchecked."""
    order, _ = _candidates(work, block, exclude)
    write_nbits(work, dst, order, block)
    if not order:
        return []
    return [f"4-bit weight-only on all {len(order)} MatMul weights (block {block}, symmetric, ONNX Runtime "
            "MatMulNBits); not checked (weight_bits=4)"]


def choose_int4(work: Path, dst: Path, tmp: Path, block: int, passes: Callable[[Path], tuple[bool, str]],
                exclude: list[str], finish: Callable[[Path, Path], None], check: Dataset | None = None,
                out_of_time: Callable[[], bool] | None = None) -> list[str]:
    """`dst` holds auto's int8 choice for the float graph `work`; put as many MatMul weights as the check allows in
    4 bits on top of it: `finish(base, dst)` re-applies that int8 choice to `base` (the graph with some MatMuls
    4-bit) into `dst`. Leaves `dst` as the int8 choice when no 4-bit set holds, or when `out_of_time()` (the run's
    --time-limit) says before a try that there is no time for it. Returns the notes."""
    order, _ = _candidates(work, block, exclude, check)
    if not order:
        return []  # no MatMul with a constant 2-D weight (a conv net's Conv/Gemm): nothing to say
    where = f"block {block}, symmetric, ONNX Runtime MatMulNBits"
    four, tried = tmp / "int4.onnx", []
    for k in growing(len(order))[:-1]:
        if out_of_time is not None and out_of_time():
            if tried:  # `dst` holds the last try's graph: back to the int8 choice
                finish(work, dst)
            return [f"4-bit weight-only not kept: --time-limit reached after {len(tried)} of the step's tries "
                    f"({'; '.join(tried) or 'none'} of {len(order)} MatMul weights): int8 only"]
        write_nbits(work, four, order[k:], block)
        ok, how = tried_form(lambda: finish(four, dst), passes, dst)  # a form ORT cannot make fails like any other
        tried.append(f"{len(order) - k}: {how}")
        if ok:
            kept = (f"; kept int8 (largest 4-bit output error on the check set): {', '.join(order[:k][:12])}"
                    + (f" and {k - 12} more" if k > 12 else "")) if k else ""
            return [f"4-bit weight-only on {len(order) - k} of {len(order)} MatMul weights on top of the int8 "
                    f"choice ({where}): {how}{kept}"]
    finish(work, dst)
    return [f"4-bit weight-only failed the check at every size tried ({'; '.join(tried)} of {len(order)} MatMul "
            "weights): int8 only"]
