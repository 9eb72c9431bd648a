"""Tensor encodings for `model.safetensors` (see the README's "Weight encodings" for the byte layout).

- ``dense``: the tensor itself, under its own name.
Sparse encodings (bitmask, codebook) are added by the prune work; every encoding decodes exactly.
"""
from __future__ import annotations

from typing import Any

import torch


def encode_state(state: dict[str, torch.Tensor], enabled: bool = True,
                 codebook: dict[str, Any] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    tensors: dict[str, torch.Tensor] = {}
    records: dict[str, dict] = {}
    for name, t in state.items():
        tensors[name] = t
        records[name] = {"encoding": "dense"}
    return tensors, records


def decode_state(tensors: dict[str, torch.Tensor], records: dict[str, dict]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for name, rec in records.items():
        if rec.get("encoding") == "dense":
            state[name] = tensors[name]
    return state
