"""The frozen original's outputs on the training set, computed once and looked up for every batch of every epoch.

Why: distillation (label-free fine-tuning, and the distillation term with labels) needs the original model's
outputs for each training batch; the original never changes, so running it again on every batch of every epoch
of every fine-tune repeats one forward per step for nothing (a quarter of a step's work when the student is the
teacher's size). The outputs are kept when they fit in TEACHER_CACHE_BYTES (a language model's per-token logits
over a large set may not: those batches are run as before); a batch from any other set (validation) is run too.
"""
from __future__ import annotations

import torch
from torch import nn

from compressor.io.data import Dataset
from compressor.runtime.calls import call_model, predict

TEACHER_CACHE_BYTES = 512 * 2**20


class TeacherOutputs:
    """`outputs(batch)`: the original's outputs on `batch`, from the cache when the batch's rows are all in `data`."""

    def __init__(self, original: nn.Module, data: Dataset, device: torch.device) -> None:
        self.original, self.device, self.data = original, device, data
        self.cache: torch.Tensor | None = None
        self.position: torch.Tensor | None = None  # root row -> row of the cache (-1: not in it)
        self.tried = False

    def _build(self, example: torch.Tensor) -> None:
        self.tried = True
        if example[0].numel() * example.element_size() * len(self.data) > TEACHER_CACHE_BYTES:
            return
        rows = self.data.root_rows()
        self.cache = predict(self.original, self.data, self.device).to(example.dtype)
        self.position = torch.full((int(rows.max()) + 1 if len(rows) else 0,), -1, dtype=torch.long)
        self.position[rows] = torch.arange(len(rows))

    @torch.no_grad()
    def outputs(self, batch: Dataset) -> torch.Tensor:
        if batch.root == self.data.root and not self.tried:
            out = call_model(self.original, batch, self.device)  # this batch's, and the size of one sample's
            self._build(out)
            return out
        if batch.root == self.data.root and self.cache is not None:
            rows = batch.root_rows()
            if len(rows) and int(rows.max()) < len(self.position):
                where = self.position[rows]
                if bool((where >= 0).all()):
                    return self.cache[where].to(self.device)
        return call_model(self.original, batch, self.device)
