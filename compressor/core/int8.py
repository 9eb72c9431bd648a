"""The one int8 quantizer of compressor's own compact tensors (rpg ring, basis coefficients): symmetric, zero
point 0, one scale per row (scale = max |row| / 127, 1 for an all-zero row), values clipped to [-127, 127]; and the
graph nodes that restore them in ONNX, in a form ONNX Runtime folds once per session."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def symmetric_int8(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(q int8 of the rows' shape, scale float32 per row) of a 2-D float32 array."""
    scale = np.abs(rows).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.round(rows / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def dequantize_rows(q: str, scale: np.ndarray, out: str, name: str) -> tuple[list[onnx.NodeProto],
                                                                             onnx.TensorProto]:
    """Graph nodes computing `out` = float(q) * scale per row for the int8 2-D initializer `q`, and the scale as the
    [rows, 1] float32 initializer `<name>/scale` they read: Cast to float, then Mul.

    The same float32 values as DequantizeLinear(q, scale, 0, axis=0), but ONNX Runtime constant-folds Cast and Mul
    when a session starts and never folds DequantizeLinear (it keeps Q/DQ groups for its integer kernels): in this
    form the weights a ring or a basis generates from its int8 tensors are computed once, not on every call."""
    column = numpy_helper.from_array(np.asarray(scale, np.float32).reshape(-1, 1), f"{name}/scale")
    nodes = [helper.make_node("Cast", [q], [f"{out}/float"], name=f"{name}/cast", to=TensorProto.FLOAT),
             helper.make_node("Mul", [f"{out}/float", column.name], [out], name=f"{name}/rescale")]
    return nodes, column
