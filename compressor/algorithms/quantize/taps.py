"""Graph tensors of a float ONNX graph, streamed one batch of a data set at a time.

auto.py scores each weighted node's calibrated input range and int4.py orders MatMul weights by the error 4-bit
rounding puts on their output, both over the check set's activations. Holding every tapped tensor for the whole
set grows with the set and the model (a BERT-base encoder has 72 weighted nodes, each input [rows, 768..3072] in
float64); so the tensors come one batch at a time from one ONNX Runtime session, and each caller keeps only the
sums it needs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import onnx

from compressor.io.data import Dataset
from compressor.io.onnx_export import ort_session

TAP_BATCH = 64


def as_rows(value: np.ndarray) -> np.ndarray:
    """A tensor as [rows, last dim] float64 (a scalar as [1, 1])."""
    value = np.asarray(value, np.float64)
    return value.reshape(-1, value.shape[-1]) if value.ndim else value.reshape(1, 1)


def tapped(graph: Path | onnx.ModelProto, tensors: list[str], data: Dataset,
           max_rows: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """For each batch of `data`, the values of `tensors` in the float graph (`as_rows`), from one session of the
    graph with them added as outputs (single-threaded, so the values do not depend on the machine's cores). With
    `max_rows`, only the first `max_rows` rows of each tensor over the whole set are given, and the data stops once
    every tensor has them. A graph given as a proto is left as it was."""
    model = onnx.load(str(graph)) if isinstance(graph, Path) else graph
    wanted = sorted(set(tensors))
    kept = len(model.graph.output)
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=t) for t in wanted if t not in known)
    serialized = model.SerializeToString()
    del model.graph.output[kept:]
    del model
    session = ort_session(serialized, threads=1)
    del serialized
    feeds = [i.name for i in session.get_inputs()]
    seen = dict.fromkeys(wanted, 0)
    for batch in data.batches(TAP_BATCH):
        if not wanted or (max_rows is not None and min(seen.values()) >= max_rows):
            return
        feed = dict(zip(feeds, (v.numpy() for v in batch.inputs.values())))
        values = {}
        for name, value in zip(wanted, session.run(wanted, feed)):
            rows = as_rows(value)
            if max_rows is not None:
                rows = rows[:max(max_rows - seen[name], 0)]
            seen[name] += len(rows)
            if len(rows):
                values[name] = rows
        yield values
