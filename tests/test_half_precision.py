"""Half-precision programs: a float16 `.pt2` that takes float16 inputs runs on its data as given (cast to the dtype
the program declares) and its quantize run says that ONNX Runtime's int8 quantizers left its float16 weights alone;
a bfloat16 model, which ONNX Runtime cannot run on CPU, is refused in one line that says so."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from compressor.io.data import load_dataset
from tests.conftest import read_report, run_cli


def _save(tmp_path, model: nn.Module, dtype: torch.dtype, name: str):
    x = torch.randn(4, 16).to(dtype)
    dyn = ({0: torch.export.Dim("batch", min=1, max=4096)},)
    torch.export.save(torch.export.export(model.eval(), (x,), dynamic_shapes=dyn), str(tmp_path / f"{name}.pt2"))
    data = np.random.default_rng(0).standard_normal((120, 16)).astype(np.float32)
    with torch.no_grad():
        labels = model(torch.from_numpy(data).to(dtype)).float().argmax(1).numpy()
    np.savez(tmp_path / f"{name}.npz", x=data.astype(np.float16), y=labels)
    return tmp_path / f"{name}.pt2", tmp_path / f"{name}.npz"


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def test_float16_program_runs_on_its_own_dtype_and_says_nothing_was_quantized(tmp_path):
    model, data = _save(tmp_path, _mlp().half(), torch.float16, "half")
    assert load_dataset(data, ["x"], {"x": torch.float16}).inputs["x"].dtype == torch.float16
    assert load_dataset(data, ["x"]).inputs["x"].dtype == torch.float32  # no declared dtype: float32 as before
    res = run_cli(model, "--pipeline", "quantize", "--data", data, "--out", tmp_path / "o", "--quiet")
    assert res.code == 0, res
    decision = read_report(tmp_path / "o")["stages"][0]["decision"]
    assert decision.startswith("WARNING: no node was quantized") and "float16" in decision, decision


def test_bfloat16_model_is_refused_in_one_line(tmp_path):
    class Bf16(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _mlp().bfloat16()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x.bfloat16()).float()

    model, data = _save(tmp_path, Bf16(), torch.float32, "bf16")
    res = run_cli(model, "--pipeline", "quantize", "--data", data, "--out", tmp_path / "o")
    assert res.code != 0 and "ONNX Runtime cannot run the model's ONNX export" in res.stderr, res
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "bfloat16" in errors[0] and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "o").exists()


def test_a_bfloat16_input_is_refused_when_the_data_is_read(tmp_path):
    model, data = _save(tmp_path, _mlp().bfloat16(), torch.bfloat16, "bf16in")
    res = run_cli(model, "--pipeline", "quantize", "--data", data, "--out", tmp_path / "o")
    assert res.code == 1 and "as bfloat16, which ONNX Runtime cannot be given" in res.stderr, res
