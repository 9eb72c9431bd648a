"""One thread count for every computation of a run, so that a seed gives the same bytes on any machine setting.

Why: a float reduction split over T threads sums its partial results in a T-dependent order, so fine-tuning,
k-means and calibration drift in the last bits with the thread count, and after a few hundred optimizer steps
that changes which weights are pruned. torch reads OMP_NUM_THREADS (and defaults to the number of cores), ONNX
Runtime to the number of physical cores: both are pinned here instead, to `--threads` (default 1: the same
bytes on a laptop, a CI runner and a 64-core server; the sample models gain little from more, and a larger
model can ask for more, which is then recorded in the report and the resume fingerprint).
"""
from __future__ import annotations

import torch

DEFAULT_THREADS = 1
_pinned = DEFAULT_THREADS


def pin_threads(threads: int) -> int:
    """Use exactly `threads` intra-op threads in torch and in every ONNX Runtime session made afterwards;
    returns the previous torch setting, so a caller that is a library call can put it back."""
    global _pinned
    previous = torch.get_num_threads()
    _pinned = int(threads)
    torch.set_num_threads(_pinned)
    return previous


def pinned_threads() -> int:
    return _pinned
