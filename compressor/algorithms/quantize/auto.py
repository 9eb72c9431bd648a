"""quantize mode=auto: static calibrated QDQ where it is safe, per-op fallback where calibration fails.

Why: static int8 of activations needs a fixed range per tensor, and transformer activations break that — softmax
scores, LayerNorm outputs and residual sums carry outliers, and BERT's attention mask adds the most negative float
to padded keys, so a MinMax range spans 1e38 and every real value rounds to zero (docs/ALGORITHMS.md §5; Dettmers
et al., "LLM.int8()", 2022; Bondarenko et al., "Understanding and Overcoming the Challenges of Efficient
Transformer Quantization", EMNLP 2021). Weights quantize well everywhere. So, measured rather than guessed:

1. static QDQ on every op ONNX Runtime quantizes (as `mode=static` does); kept if the output on the check set (the
   validation split, else the calibration set — never held-out) stays within the cosine bounds of the float graph;
2. otherwise only the weighted nodes (MatMul/Gemm/Conv with a constant weight) are quantized statically, the other
   ops (Softmax, LayerNormalization, Add, Where, ...) keep float activations; each weighted node's input is scored by
   the relative error of its calibrated int8 round trip on the check set, ||x - dq(q(x))|| / ||x||;
3. the worst nodes move to dynamic int8 (int8 weights, activation range taken at run time: nothing calibrated), then
   to int8 weight-only (int8 weights dequantized in the graph, float activations: weight_only.py), in growing groups
   (1, 2, 4, ... nodes), until the check-set output is within bounds; float only if even that fails;
4. then MatMul weights go 4-bit block-wise on top of that choice where the check still holds (int4.py).
Embedding lookups (Gather of a constant table) are stored int8 weight-only in steps 2-3. Every choice is in the notes.
The check is the cosine bounds for outputs of 2 or more values a sample; a narrower output (regression, [N, 1]) is
judged by its relative error instead (`output_error`, `checker`), and the notes name the check and its bounds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import onnx

from compressor.algorithms.quantize.taps import tapped
from compressor.errors import CompressorError, first_line
from compressor.io.data import Dataset

WEIGHTED = ("MatMul", "Gemm", "Conv")
LISTED = 12  # node names spelled out in a note (worst first)


def weighted_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """MatMul/Gemm/Conv nodes whose second input (the weight) is an initializer: the ones worth int8 weights."""
    inits = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type in WEIGHTED and len(n.input) > 1 and n.input[1] in inits]


def detached(node: onnx.NodeProto) -> onnx.NodeProto:
    """A copy of `node` that does not keep its graph (and every weight in it) in memory."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy


def gather_tables(model: onnx.ModelProto) -> list[str]:
    """Gather nodes reading a constant table (embeddings): int8 weight-only, no activation range involved."""
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "Gather" and n.input[0] in inits]


def input_qparams(qmodel: onnx.ModelProto, tensors: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The calibrated (scale, zero point) the static graph gives each of the activations `tensors` it quantized."""
    wanted = set(tensors)
    quantizers = {n.input[0]: n for n in qmodel.graph.node
                  if n.op_type == "QuantizeLinear" and n.input[0] in wanted}
    needed = {name for n in quantizers.values() for name in n.input[1:3]}
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in qmodel.graph.initializer if i.name in needed}
    out = {}
    for tensor, node in quantizers.items():
        if node.input[1] in inits:
            zp = inits.get(node.input[2], np.zeros((), np.uint8)) if len(node.input) > 2 else np.zeros((), np.uint8)
            out[tensor] = (inits[node.input[1]], zp)
    return out


def roundtrip_sums(x: np.ndarray, scale: np.ndarray, zp: np.ndarray) -> tuple[float, float]:
    """(||x - dq(q(x))||^2, ||x||^2) for ONNX's QuantizeLinear (round half to even, saturate to the zero point's
    type): summed over batches, their ratio's square root is the round-trip error of the whole set."""
    info = np.iinfo(zp.dtype)
    q = np.clip(np.rint(x / scale) + zp.astype(np.float64), info.min, info.max)
    return float(np.square((q - zp.astype(np.float64)) * scale - x).sum()), float(np.square(x).sum())


def roundtrip_error(x: np.ndarray, scale: np.ndarray, zp: np.ndarray) -> float:
    """||x - dq(q(x))|| / ||x||."""
    err, norm = roundtrip_sums(x, scale, zp)
    return err ** 0.5 / max(norm ** 0.5, 1e-30)


def node_errors(float_path: Path, qmodel: onnx.ModelProto, nodes: list[onnx.NodeProto],
                check: Dataset) -> dict[str, float]:
    """Each weighted node's activation round-trip error over the check set, with the ranges the full static pass
    calibrated (streamed a batch at a time: taps.py); a node whose input the static pass left unquantized scores
    infinity (it cannot be checked, so it goes first)."""
    qparams = input_qparams(qmodel, [n.input[0] for n in nodes])
    sums = {t: [0.0, 0.0] for t in qparams}
    for values in tapped(float_path, list(qparams), check):
        for tensor, x in values.items():
            err, norm = roundtrip_sums(x.reshape(-1), *qparams[tensor])
            sums[tensor][0] += err
            sums[tensor][1] += norm
    return {n.name: float("inf") if n.input[0] not in sums else
            sums[n.input[0]][0] ** 0.5 / max(sums[n.input[0]][1] ** 0.5, 1e-30) for n in nodes}


def growing(n: int) -> list[int]:
    """0, 1, 2, 4, ... n: the group sizes tried, so a model with hundreds of layers needs O(log n) quantizations."""
    sizes, k = [0], 1
    while k < n:
        sizes.append(k)
        k *= 2
    return sizes + [n] if n else sizes


class Forms(Protocol):
    """The int8 quantizations auto combines, bound to one graph (the float graph, or it with some MatMuls 4-bit).
    `exclude`: the nodes the user keeps in float (quantize.exclude), which none of them touches."""

    exclude: list[str]

    def static_all(self, dst: Path) -> None:
        """Static QDQ on every op ONNX Runtime quantizes."""

    def mixed(self, dst: Path, static: list[str], dynamic: list[str], weight_only: list[str],
              tables: list[str]) -> None:
        """Static QDQ on `static`, dynamic int8 on `dynamic` and the Gather `tables`, int8 weight-only (weight_only.py)
        on `weight_only`; every other node float."""


Realize = Callable[[Forms, Path], None]
Check = Callable[[Path], tuple[bool, str]]


def tried(write: Callable[[], None], passes: Check, dst: Path) -> tuple[bool, str]:
    """A form written into `dst` by `write`, then checked; one that ONNX Runtime's quantizer cannot write fails the
    check, saying why (as one it cannot run does: output_check.py), so auto moves on to its next form."""
    try:
        write()
    except Exception as exc:  # noqa: BLE001 - a quantizer failure: the form is not made, the next one is tried
        if isinstance(exc, (MemoryError, CompressorError)):
            raise  # out of memory, or one of ours that says what to do: not a form that failed
        return False, f"ONNX Runtime's quantizer could not make this form ({first_line(exc)})"
    return passes(dst)


def choose(work: Path, dst: Path, check: Dataset, passes: Check, forms: Forms) -> tuple[list[str], Realize]:
    """Run the auto procedure (module docstring) on the pre-processed float graph `work`, writing `dst`. Returns the
    notes and the choice as `realize(forms, dst)`, which applies the same per-node choice to another graph (the
    4-bit step's, whose MatMulNBits nodes the int8 quantizers leave alone)."""
    where = f"on {len(check)} samples of {check.source}"
    ok, how = tried(lambda: forms.static_all(dst), passes, dst)
    if ok:
        return [f"auto: static QDQ on every op kept: {how} {where}"], lambda f, d: f.static_all(d)
    model = onnx.load(str(work))  # only the node list is kept: a node proto would keep the whole graph alive
    others = sorted({n.op_type for n in model.graph.node} - set(WEIGHTED) - {"Gather", "Constant"})
    shown = ", ".join(others[:4]) + (f" and {len(others) - 4} other op kinds" if len(others) > 4 else "")
    notes = [f"auto: static QDQ on every op failed the check ({how} {where}): the ops without weights"
             + (f" ({shown})" if others else "") + " keep float activations"]
    nodes = [detached(n) for n in weighted_nodes(model) if n.name not in forms.exclude]
    tables = [t for t in gather_tables(model) if t not in forms.exclude]
    del model
    names = [n.name for n in nodes]
    ok, how = tried(lambda: forms.mixed(dst, names, [], [], tables), passes, dst)
    if ok:
        return notes + _describe("static", [], {}, names, [], [], tables, how, where), \
            lambda f, d: f.mixed(d, names, [], [], tables)
    notes.append(f"auto: static on the weighted nodes only: {how}")
    try:
        errors = node_errors(work, onnx.load(str(dst)), nodes, check)
    except Exception:  # noqa: BLE001 - no static graph to read ranges from: every node ranks alike (by name)
        errors = {n.name: float("inf") for n in nodes}
    names = [n.name for n in sorted(nodes, key=lambda n: (-errors[n.name], n.name))]
    for level in ("dynamic", "weight-only"):
        for k in growing(len(names))[1:]:  # k = 0 of weight-only is k = n of dynamic: every node dynamic
            worst = names[:k]
            static, dynamic, wo = (names[k:], worst, []) if level == "dynamic" else ([], names[k:], worst)
            ok, how = tried(lambda: forms.mixed(dst, static, dynamic, wo, tables), passes, dst)
            if ok:
                return notes + _describe(level, worst, errors, static, dynamic, wo, tables, how, where), \
                    lambda f, d, s=static, dy=dynamic, w=wo: f.mixed(d, s, dy, w, tables)
    forms.mixed(dst, [], [], [], [])
    return notes + [f"auto: every weighted node and embedding table left in float: {passes(dst)[1]} {where}"], \
        lambda f, d: f.mixed(d, [], [], [], [])


def _describe(level: str, worst: list[str], errors: dict[str, float], static: list[str], dynamic: list[str],
              weight_only: list[str], tables: list[str], how: str, where: str) -> list[str]:
    def why(name: str) -> str:
        e = errors[name]
        return f"{name} (activation int8 round-trip error {e:.3f})" if np.isfinite(e) else f"{name} (not calibrated)"

    def listing(names: list[str]) -> str:
        more = f", and {len(names) - LISTED} more" if len(names) > LISTED else ""
        return ", ".join(why(n) for n in names[:LISTED]) + more

    notes = [f"auto: {len(static)} weighted nodes static int8, {len(dynamic)} dynamic int8 (float activations "
             f"quantized at run time), {len(weight_only)} int8 weight-only (float activations), {len(tables)} "
             f"embedding tables int8 weight-only: {how} {where}"]
    if level == "dynamic" and worst:
        notes.append("auto: moved to dynamic, the static range failed: " + listing(worst))
    if level == "weight-only":
        notes.append("auto: int8 weights with float activations (dynamic int8 still failed the check): "
                     + listing(worst))
    return notes
