"""Why a weight of the model has no int8 form in a quantized model.onnx, read from the graph itself.

A weight can be missing from the int8 weights for two different reasons, and a user acts differently on each:
it is not a tensor of its own in the graph (the exporter folded it into another, e.g. a convolution's weight
scaled by the batch norm after it, so the int8 tensor that holds it is no parameter), or the graph still holds it
as float (the quantizer left its op out: an op type without an int8 form in that mode, such as LSTM or an
embedding's Gather, or a node excluded or kept float by quantize's own checks). The op types that read it say which.
"""
from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import numpy_helper

FOLDED = "held by no initializer of model.onnx (folded or merged into another, e.g. conv + batch norm)"
FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def _readers(model: onnx.ModelProto) -> dict[str, set[str]]:
    """Tensor name -> the op types that use it, looking through DequantizeLinear to the op its output feeds."""
    direct: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            direct.setdefault(name, []).append(node)

    def ops(name: str) -> set[str]:
        out = set()
        for node in direct.get(name, []):
            out |= ops(node.output[0]) or {node.op_type} if node.op_type == "DequantizeLinear" else {node.op_type}
        return out
    return {name: ops(name) for name in direct}


def _scale_for(inits: dict[str, onnx.TensorProto], name: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The scale an integer tensor is stored with (ONNX Runtime's `X_quantized` / `X_scale` naming), shaped to
    broadcast over it."""
    base = name[: -len("_quantized")] if name.endswith("_quantized") else name
    init = inits.get(f"{base}_scale") or inits.get(f"{name}_scale")
    if init is None:
        return None
    scale = numpy_helper.to_array(init).astype(np.float32)
    if scale.size == 1 or scale.ndim == len(shape):
        return scale
    axis = next((a for a, n in enumerate(shape) if n == scale.size), None)
    return None if axis is None else scale.reshape([-1 if a == axis else 1 for a in range(len(shape))])


def _sorted_values(init: onnx.TensorProto, inits: dict[str, onnx.TensorProto]) -> tuple[np.ndarray, float] | None:
    """An initializer's values sorted (an integer one dequantized), and how far each may be from the weight it
    holds: 0 for a float tensor, half the largest step for an integer one (sorting moves no value by more than the
    largest change of one). None: an integer tensor without a scale of its own."""
    array = numpy_helper.to_array(init)
    if init.data_type in FLOATS:
        return np.sort(array.astype(np.float32), axis=None), 0.0
    scale = _scale_for(inits, init.name, array.shape)
    if scale is None:
        return None
    zero = inits.get(init.name.replace("_quantized", "") + "_zero_point") or inits.get(f"{init.name}_zero_point")
    offset = 0 if zero is None else numpy_helper.to_array(zero).astype(np.float32).reshape(scale.shape)
    return np.sort((array.astype(np.float32) - offset) * scale, axis=None), 0.51 * float(np.abs(scale).max()) + 1e-7


def stay_float_reasons(model: onnx.ModelProto, state: dict[str, torch.Tensor], names: list[str]) -> dict[str, str]:
    """Weight name -> why model.safetensors keeps it float: the graph holds it float ("kept float in model.onnx"),
    holds it as integers in a layout of its own ("quantized in model.onnx in a layout of its own", e.g. an LSTM's
    gates or an int32 bias), or does not hold it as a tensor of its own (`FOLDED`); with the ops that read it.
    Only initializers of the weight's size are read, one at a time."""
    readers = _readers(model)
    inits = {init.name: init for init in model.graph.initializer}
    by_numel: dict[int, list[onnx.TensorProto]] = {}
    for init in inits.values():
        by_numel.setdefault(int(np.prod(init.dims)) if init.dims else 1, []).append(init)
    sorted_inits: dict[str, tuple[np.ndarray, float] | None] = {}  # each initializer sorted once, when first needed

    def holds(init: onnx.TensorProto, values: np.ndarray) -> bool:
        if init.name not in sorted_inits:
            sorted_inits[init.name] = _sorted_values(init, inits)
        ready = sorted_inits[init.name]
        return ready is not None and bool(np.abs(ready[0] - values).max() <= ready[1])

    reasons = {}
    for name in names:
        values = np.sort(state[name].detach().to(torch.float32).cpu().numpy(), axis=None)
        found = next((init for init in by_numel.get(values.size, []) if holds(init, values)), None)
        if found is None:
            reasons[name] = FOLDED
            continue
        how = "kept float" if found.data_type in FLOATS else "quantized in a layout of its own"
        reasons[name] = f"{how} in model.onnx (read by {', '.join(sorted(readers.get(found.name, {'no op'})))})"
    return reasons


def describe_float(reasons: dict[str, str], shown: int = 3) -> str:
    """One clause per reason, each with how many weights it covers and the first few names."""
    groups: dict[str, list[str]] = {}
    for name, reason in reasons.items():
        groups.setdefault(reason, []).append(name)
    parts = []
    for reason, names in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        more = f" and {len(names) - shown} more" if len(names) > shown else ""
        parts.append(f"{len(names)} {reason}: {', '.join(names[:shown])}{more}")
    return "; ".join(parts)
