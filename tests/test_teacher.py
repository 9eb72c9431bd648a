"""The original's outputs for distillation are computed once for the training set and looked up for every batch;
batches from other rows (validation split from the same file) are run as before."""
from __future__ import annotations

import torch
from torch import nn

from compressor.core.teacher import TeacherOutputs
from compressor.io.data import Dataset, split_validation


class Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)
        self.rows = 0

    def forward(self, x):
        self.rows += len(x)
        return self.fc(x)


def test_outputs_are_computed_once_for_the_training_set():
    torch.manual_seed(0)
    data = Dataset({"x": torch.randn(300, 6)}, None, "file")
    train, val = split_validation(data, 0.1, seed=0)
    original = Counting().eval()
    teacher = TeacherOutputs(original, train, torch.device("cpu"))
    for epoch in range(3):
        for batch in train.batches(32, torch.Generator().manual_seed(epoch)):
            got = teacher.outputs(batch)
            with torch.no_grad():
                assert torch.allclose(got, original.fc(batch.inputs["x"]), atol=1e-6)
    assert original.rows == len(train) + 32  # one pass over the set (and the first batch, run as it came)
    before = original.rows
    for batch in val.batches(16):
        with torch.no_grad():
            assert torch.allclose(teacher.outputs(batch), original.fc(batch.inputs["x"]), atol=1e-6)
    assert original.rows == before + len(val)  # validation rows are not in the cache: run as before
