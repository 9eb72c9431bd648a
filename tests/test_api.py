"""The Python API (compressor/api.py): an in-memory module and a DataLoader, arrays or files in, a result out; the
README's example runs as written."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import compressor
from compressor.errors import UsageError
from tests.conftest import HELDOUT, ROOT, SAMPLES, TRAIN


def _digits(path):
    data = np.load(path)
    return torch.from_numpy(data["x"]).float(), torch.from_numpy(data["y"]).long()


def _trained_mlp() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    x, y = _digits(TRAIN)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def test_in_memory_module_and_dataloader(tmp_path):
    model = _trained_mlp()
    x, y = _digits(TRAIN)
    loader = DataLoader(TensorDataset(x, y), batch_size=100)
    result = compressor.compress(model, _digits(HELDOUT), pipeline="prune,quantize", train_data=loader,
                                 stages={"prune": {"target": 0.5, "epochs_per_step": 1}, "quantize":
                                         {"objective": "size"}}, out=tmp_path / "out", seed=1)
    assert result.passed and result.exit_code == 0
    assert result.report["stages"][0]["sparsity"] >= 0.3 and result.final >= result.baseline - 1.0
    assert result.onnx_path.is_file() and result.safetensors_path.is_file()
    rebuilt = compressor.load(result.out, model=_trained_mlp())  # the same architecture, the stored weights
    with torch.no_grad():
        pruned = rebuilt[1].weight
    assert float((pruned == 0).float().mean()) >= 0.3
    assert len(result.report["data"]["train"]) and result.report["pipeline"] == ["prune", "quantize"]


def test_paths_work_as_on_the_command_line(tmp_path):
    result = compressor.compress(SAMPLES / "digits_mlp.pt2", HELDOUT, out=tmp_path / "o", max_drop=0.0,
                                 stages={"quantize": {"mode": "dynamic"}})
    assert result.exit_code in (0, 3) and (result.exit_code == 0) == result.report["gate"]["passed"]
    assert result.report["model"]["format"] == "pt2"


@pytest.mark.parametrize("kwargs, message", [
    ({"data": "nope.npz"}, "data file not found"),
    ({"data": HELDOUT, "colour": "red"}, "unknown option"),
    ({"data": HELDOUT, "stages": {"quantize": {"modee": "x"}}}, r"compress\(\): stages\['quantize'\]: unknown option "
                                                                 r"quantize.modee"),
    ({"data": [1, 2]}, "must be a path, arrays"),
    ({"data": HELDOUT, "stages": {"prune": {"target": 0.5}}}, "not in the pipeline"),
    ({"data": HELDOUT, "threads": 0}, "--threads: threads must be >= 1"),
    ({"data": HELDOUT, "time_limit": -5}, "time_limit"),
])
def test_bad_input_raises_the_cli_error(tmp_path, kwargs, message):
    with pytest.raises(compressor.CompressorError, match=message):
        compressor.compress(SAMPLES / "digits_mlp.pt2", out=tmp_path / "o", **kwargs)


def test_in_memory_data_is_named_by_its_argument_and_the_result_reads_short(tmp_path):
    x, y = _digits(HELDOUT)
    with pytest.raises(compressor.CompressorError, match=r"train_data \(in memory\)") as caught:
        compressor.compress(SAMPLES / "digits_mlp.pt2", (x, y), train_data=(x[:, :, :4], y), pipeline="prune",
                            out=tmp_path / "o")
    assert "compressor-api-" not in str(caught.value)
    result = compressor.compress(SAMPLES / "digits_mlp.pt2", (x, y), out=tmp_path / "q",
                                 stages={"quantize": {"mode": "dynamic"}})
    assert repr(result).startswith("CompressResult(out=") and len(repr(result)) < 200, repr(result)


def test_a_module_torch_cannot_export_is_one_clear_error(tmp_path):
    class Branchy(nn.Module):
        def forward(self, x):
            return x * 2 if float(x.sum()) > 0 else x  # data-dependent Python control flow

    with pytest.raises(UsageError, match="torch.export could not export"):
        compressor.compress(Branchy(), _digits(HELDOUT), out=tmp_path / "o")


def test_readme_example_runs(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))
    (tmp_path / "sample_models").symlink_to(SAMPLES)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "out-api" / "model.onnx").is_file()


def test_in_memory_inputs_as_a_user_writes_them(tmp_path):
    """A float64 [inputs, labels] list (numpy's default), an in-memory module, a missing data file, a bad threads
    value that must not leave --out locked, and the caller's root logger left as it was."""
    import logging

    model = _trained_mlp().train()
    x, y = _digits(HELDOUT)
    handlers = list(logging.getLogger().handlers)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with pytest.raises(compressor.CompressorError, match="data file not found"):
        compressor.compress(model, tmp_path / "nope.npz", out=tmp_path / "o")
    with pytest.raises(compressor.CompressorError, match="--threads"):
        compressor.compress(model, [x.double().numpy(), y.numpy()], out=tmp_path / "o", threads=0)
    result = compressor.compress(model, [x.double().numpy(), y.numpy()], out=tmp_path / "o",
                                 stages={"quantize": {"objective": "size"}})
    assert result.passed and result.report["metric"]["name"] == "accuracy"
    assert logging.getLogger().handlers == handlers
    assert model.training and torch.equal(torch.rand(3), expected)  # the caller's module mode and random state
