"""The calibration samples fed to ONNX Runtime's static quantizer, in batches whose activations fit in memory.

ORT's MinMax calibrator runs an augmented copy of the graph with a ReduceMin and a ReduceMax output for every
float tensor, with graph optimisations off; the reductions run after the graph, so every intermediate tensor of a
batch is alive at once (measured on a BERT-base-sized encoder, batch 32 x 64 tokens: 7.2 GB for 0.44 GB of
weights). The ranges are a minimum and a maximum over all samples, so the batch size does not change them; the batch
is made small enough that one batch's intermediate tensors stay within CALIB_ACTIVATION_BYTES.
"""
from __future__ import annotations

import numpy as np
import onnx

from compressor.algorithms.quantize.taps import sample_bytes
from compressor.io.data import Dataset

CALIB_ACTIVATION_BYTES = 128 * 2**20


def calibration_batch(model: onnx.ModelProto, batch: int) -> int:
    """`batch` (the calib_batch option), or fewer samples where one batch's intermediate tensors would pass
    CALIB_ACTIVATION_BYTES (at least 1)."""
    per_sample = sample_bytes(model, [i.name for i in model.graph.value_info])
    return max(1, min(batch, CALIB_ACTIVATION_BYTES // per_sample)) if per_sample else batch


class CalibrationReader:
    """ONNX Runtime CalibrationDataReader over a Dataset."""

    def __init__(self, data: Dataset, input_names: list[str], batch: int) -> None:
        self._batches = [
            {n: np.asarray(v.numpy()) for n, v in zip(input_names, b.inputs.values())} for b in data.batches(batch)
        ]
        self._it = iter(self._batches)

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._batches)
