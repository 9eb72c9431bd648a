"""A weight shared by two ops (an embedding table tied to the output layer) cannot be quantized static per-channel
by ONNX Runtime: the two consumers want scales along different axes, and the graph it writes fails to run. auto then
takes that form as failing its check, says why, and goes on to its next form, so the run ends with a decision instead
of an error."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tests.conftest import read_report, run_cli


class TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(120, 32)
        self.layers = nn.ModuleList([nn.Sequential(nn.Linear(32, 32), nn.GELU()) for _ in range(3)])
        self.out = nn.Linear(32, 120, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(input_ids)
        for layer in self.layers:
            h = h + layer(h)
        return self.out(h[:, -1])


def test_a_tied_weight_falls_back_from_the_static_form_ort_cannot_run(tmp_path):
    torch.manual_seed(0)
    model = TiedLM().eval()
    ids = torch.randint(0, 120, (4, 12))
    dyn = ({0: torch.export.Dim("batch", min=1, max=4096)},)
    torch.export.save(torch.export.export(model, (ids,), dynamic_shapes=dyn), str(tmp_path / "tied.pt2"))
    gen = np.random.default_rng(0)
    for name, n in (("train", 256), ("val", 200), ("held", 200)):
        x = gen.integers(0, 120, (n, 12))
        with torch.no_grad():
            labels = model(torch.from_numpy(x)).argmax(1).numpy()
        np.savez(tmp_path / f"{name}.npz", input_ids=x, y=labels)
    res = run_cli(tmp_path / "tied.pt2", "--pipeline", "quantize", "--data", tmp_path / "held.npz", "--train-data",
                  tmp_path / "train.npz", "--val-data", tmp_path / "val.npz", "--out", tmp_path / "o", "--quiet")
    assert res.code in (0, 3), res  # a decision (gate passed or failed), not an error
    notes = read_report(tmp_path / "o")["stages"][0]["notes"]
    assert "static QDQ on every op failed the check (ONNX Runtime cannot run it" in notes[0], notes
    assert "embedding_QuantizeLinear" not in res.stderr  # ONNX Runtime's own error log stays off the terminal
