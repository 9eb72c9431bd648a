"""The one int8 quantizer of compressor's own compact tensors (rpg ring, basis coefficients): symmetric, zero
point 0, one scale per row (scale = max |row| / 127, 1 for an all-zero row), values clipped to [-127, 127]."""
from __future__ import annotations

import numpy as np


def symmetric_int8(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(q int8 of the rows' shape, scale float32 per row) of a 2-D float32 array."""
    scale = np.abs(rows).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.round(rows / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale
