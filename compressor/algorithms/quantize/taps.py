"""Graph tensors of a float ONNX graph, streamed one batch of a data set at a time.

auto.py scores each weighted node's calibrated input range and int4.py orders MatMul weights by the error 4-bit
rounding puts on their output, both over the check set's activations. Holding every tapped tensor for the whole
set grows with the set and the model (a BERT-base encoder has 72 weighted nodes, each input [rows, 768..3072] in
float64); so the tensors come one batch at a time from one ONNX Runtime session, and each caller keeps only the
sums it needs.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx

from compressor.io.data import Dataset
from compressor.runtime.calls import ort_session

TAP_BATCH = 64
TAP_BYTES = 128 * 2**20  # a batch's tapped outputs (float32, as ORT returns them) stay within this


def as_rows(value: np.ndarray) -> np.ndarray:
    """A tensor as [rows, last dim] float64 (a scalar as [1, 1])."""
    value = np.asarray(value, np.float64)
    return value.reshape(-1, value.shape[-1]) if value.ndim else value.reshape(1, 1)


def tapped(graph: Path | onnx.ModelProto, tensors: list[str], data: Dataset,
           max_rows: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """For each batch of `data`, the values of `tensors` in the float graph (`as_rows`, converted as each is asked
    for), from one session of the graph with them added as outputs (single-threaded, so the values do not depend on
    the machine's cores). Batches of TAP_BATCH samples, fewer where their tapped outputs would pass TAP_BYTES. With
    `max_rows`, only the first `max_rows` rows of each tensor over the whole set are given, and the data stops once
    every tensor has them. A graph given as a proto is left as it was."""
    model = onnx.load(str(graph)) if isinstance(graph, Path) else graph
    wanted = sorted(set(tensors))
    kept = len(model.graph.output)
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=t) for t in wanted if t not in known)
    batch = max(1, min(TAP_BATCH, TAP_BYTES // max(sample_bytes(model, wanted), 1)))
    serialized = model.SerializeToString()
    del model.graph.output[kept:]
    del model
    session = ort_session(serialized, threads=1)
    del serialized
    feeds = [i.name for i in session.get_inputs()]
    seen = dict.fromkeys(wanted, 0)
    for part in data.batches(batch):
        if not wanted or (max_rows is not None and min(seen.values()) >= max_rows):
            return
        feed = dict(zip(feeds, (v.numpy() for v in part.inputs.values())))
        values = {}
        for name, value in zip(wanted, session.run(wanted, feed)):
            n = len(value.reshape(-1, value.shape[-1])) if value.ndim else 1
            if max_rows is not None:
                n = min(n, max(max_rows - seen[name], 0))
            seen[name] += n
            if n:
                values[name] = (value, n)
        yield _Rows(values)


class _Rows(dict):
    """name -> (value, rows kept); reading an item gives those rows as `as_rows` (float64 made on demand, so one
    tensor at a time is converted)."""

    def __getitem__(self, name: str) -> np.ndarray:
        value, n = super().__getitem__(name)
        return as_rows(value)[:n]

    def get(self, name: str, default=None):
        return self[name] if name in self else default

    def items(self):
        return ((name, self[name]) for name in self)


def sample_bytes(model: onnx.ModelProto, tensors: list[str]) -> int:
    """Bytes of one sample of `tensors` (their inferred shapes without the batch dimension; unknown sizes count 1;
    a tensor without an inferred shape counts nothing)."""
    infos = {i.name: i for i in list(model.graph.output) + list(model.graph.value_info) if i.type.tensor_type.elem_type}
    total = 0
    for name in tensors:
        tensor = infos[name].type.tensor_type if name in infos else None
        if tensor is None or not tensor.elem_type or not tensor.HasField("shape") or not tensor.shape.dim:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in tensor.shape.dim[1:]]
        total += math.prod(dims) * onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize
    return total
