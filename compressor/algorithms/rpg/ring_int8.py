"""The ring as int8 rows with one scale per row: the encoding of the quantized ring in the ONNX graph (and the one
any int8 weights file should use for it).

One scale for the whole ring lets a few large slots set the step for all of them (what that cost:
docs/ALGORITHMS.md §3). The ring is cut into rows of `RING_INT8_BLOCK` consecutive slots (last row zero-padded), each
quantized symmetrically with its own scale (`compressor.core.int8.symmetric_int8`: scale = max|row| / 127, zero
point 0); dequantization is q * scale, row by row, then the padding is dropped. Cost: 4 / RING_INT8_BLOCK bytes per
slot on top of the int8 value (3%).
"""
from __future__ import annotations

import numpy as np
import torch

from compressor.core.int8 import symmetric_int8

RING_INT8_BLOCK = 128


def quantize_ring(ring: np.ndarray, block: int = RING_INT8_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(q int8 [rows, block], scales float32 [rows]) of a 1-D float32 ring."""
    flat = np.asarray(ring, dtype=np.float32).reshape(-1)
    rows = -(-flat.size // block)
    padded = np.zeros(rows * block, dtype=np.float32)
    padded[:flat.size] = flat
    return symmetric_int8(padded.reshape(rows, block))


def dequantize_ring(q: torch.Tensor, scales: torch.Tensor, n: int) -> torch.Tensor:
    """The float32 ring of `n` slots from its int8 rows and per-row scales (what DequantizeLinear computes)."""
    return (q.to(torch.float32) * scales.to(torch.float32).reshape(-1, 1)).reshape(-1)[:n].contiguous()
