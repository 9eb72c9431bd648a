"""quantize mode=auto on a regression model ([N, 1] output, metric mse): per-sample cosine of one value is a sign and
the cosine of the whole column is dominated by its mean, so auto judges such outputs by their relative error
(output_check.output_error: mse / variance, max |error| / std) within the cosine bounds' equivalent
(output_check.error_bounds).

The model: a small MLP fitted to a heavy-tailed target with an offset (4 + exp(0.9 x0 + 0.4 x1) + ...). Full static
QDQ calibrates the output's range on 256 training samples, so the largest held-out outputs are clipped (20.8 -> 14.4)
and the held-out mse to the original is 0.078 (mse to the true targets 0.030 -> 0.19), while the column cosine is
0.9985: the old check kept it. The new check refuses it (mse / variance 0.027, max |error| / std 2.5 on validation)
and auto falls back per node as it does for a transformer (held-out mse to the original 0.0004)."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from compressor.algorithms.quantize.output_check import error_bounds, output_cosine, output_error
from tests.conftest import read_report, run_cli


def test_error_bounds_match_the_cosine_bounds():
    """2 (1 - cos) is the squared distance of unit vectors: mean 0.995 -> mse / variance 0.01; min 0.985 -> the worst
    squared error 0.03 of the variance, max |error| / std sqrt(0.03)."""
    rel, worst = error_bounds((0.985, 0.995))
    assert rel == pytest.approx(0.01) and worst == pytest.approx(0.03 ** 0.5)
    ref = torch.linspace(-1, 1, 101)[:, None]
    a = torch.randn(128, 16, dtype=torch.float64)
    a = a / a.norm(dim=1, keepdim=True)
    b = a + 0.05 * torch.randn_like(a)
    b = b / b.norm(dim=1, keepdim=True)
    assert ((a - b).norm(dim=1) ** 2).mean() == pytest.approx(2 * (1 - output_cosine(b, a)[1]), rel=1e-9)
    # an offset hides an error from the column cosine, not from the relative error
    err = 0.2 * torch.sign(ref)
    assert output_cosine(ref + 4 + err, ref + 4)[1] > 0.998
    rel = output_error(ref + 4 + err, ref + 4)[0]
    assert rel == pytest.approx(output_error(ref + err, ref)[0]) and rel > 0.1
    assert output_error(ref, ref) == (0.0, 0.0)


def _regression_model(tmp_path):
    rng = np.random.default_rng(0)
    n = 3200
    x = rng.normal(size=(n, 8)).astype(np.float32)
    t = (4.0 + np.exp(0.9 * x[:, 0] + 0.4 * x[:, 1]) + np.sin(x[:, 2]) + 0.3 * x[:, 3] * x[:, 4])
    t = t.astype(np.float32)[:, None]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: a second thread only contends (100x slower on a busy machine)
    try:
        return _fit(tmp_path, x, t)
    finally:
        torch.set_num_threads(threads)


def _fit(tmp_path, x, t):
    n = len(x)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    xt, tt = torch.from_numpy(x[:2150]), torch.from_numpy(t[:2150])
    for _ in range(150):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 128):
            idx = perm[i:i + 128]
            loss = nn.functional.mse_loss(model(xt[idx]), tt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    files = {}
    for name, part in (("train", slice(0, 2150)), ("val", slice(2150, 2600)), ("heldout", slice(2600, n))):
        files[name] = tmp_path / f"{name}.npz"
        np.savez(files[name], x=x[part])  # no y: the tool picks the mse metric
    program = torch.export.export(model, (torch.from_numpy(x[:4]),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "model.pt2")
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()[:, 0]
    return tmp_path / "model.pt2", files, x, t[:, 0], ref


def _onnx_outputs(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0][:, 0]


def test_auto_refuses_static_qdq_that_clips_a_regression_output(tmp_path):
    model, files, x, t, ref = _regression_model(tmp_path)
    held, val = slice(2600, len(x)), slice(2150, 2600)
    common = ["--pipeline", "quantize", "--data", files["heldout"], "--train-data", files["train"],
              "--val-data", files["val"], "--quiet"]

    # what the old check kept: full static QDQ passes the cosine bounds, yet clips the extreme outputs
    res = run_cli(model, *common, "--set", "quantize.mode=static", "--out", tmp_path / "static")
    assert res.code == 0, res
    static_val = torch.from_numpy(_onnx_outputs(tmp_path / "static" / "model.onnx", x[val]))[:, None]
    ref_val = torch.from_numpy(ref[val])[:, None]
    cmin, cmean = output_cosine(static_val, ref_val)
    assert cmin >= 0.985 and cmean >= 0.995  # the old check: "static QDQ on every op kept"
    rel, worst = output_error(static_val, ref_val)
    assert rel > 2 * 0.01 and worst > 3 * 0.03 ** 0.5  # ... with 2.7% relative squared error and clipping
    static_mse = read_report(tmp_path / "static")["stages"][-1]["metric_value"]

    res = run_cli(model, *common, "--out", tmp_path / "auto")
    assert res.code == 0, res
    stage = read_report(tmp_path / "auto")["stages"][-1]
    notes = stage["notes"]
    assert static_mse > 0.03 and stage["metric_value"] < static_mse / 10, (static_mse, stage["metric_value"])
    assert notes[0].startswith("auto: static QDQ on every op failed the check (relative error to float mse / "
                               "variance "), notes
    assert "relative error bounds: mse / variance <= 0.01, max |error| / std <= 0.1732" in notes[0], notes
    assert "cosine to float" not in " ".join(notes), notes
    assert any("dynamic int8" in n or "weight-only" in n for n in notes[1:]), notes

    out = _onnx_outputs(tmp_path / "auto" / "model.onnx", x[held])
    top = np.argsort(ref[held])[-6:]  # the largest 1% of held-out outputs: not clipped
    assert np.abs(out[top] - ref[held][top]).max() < 0.05 * (ref[held].max() - ref[held].min())
    float_err = np.mean((ref[held] - t[held]) ** 2)
    assert np.mean((out - t[held]) ** 2) < 1.5 * float_err  # the error to the true targets does not double
