"""quantize mode=auto (the default): safe on a transformer, still static QDQ on a CNN; int8 model.safetensors that
`compressor.load` rebuilds exactly as the int8 ONNX graph dequantizes its weights."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import compressor
from compressor.io.int8_encoding import Int8Weight, decode_int8, encode_int8
from tests.conftest import HELDOUT, SAMPLES, TRAIN, read_report, run_cli


def graph_weights(path) -> dict[str, np.ndarray]:
    """(q - zero_point) * scale of every int8 weight, straight from the ONNX initializers (numpy, not our code)."""
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    out = {}
    for name, q in inits.items():
        if name.endswith("_quantized") and q.dtype in (np.int8, np.uint8):
            base = name[:-len("_quantized")]
            scale, zp = inits[base + "_scale"], inits.get(base + "_zero_point", np.zeros((), q.dtype))
            shape = [1] * q.ndim
            if scale.size > 1:
                axis = [d for d, n in enumerate(q.shape) if n == scale.size][-1 if q.ndim == 2 else 0]
                shape[axis] = -1
            out[base] = (q.astype(np.float32) - zp.astype(np.float32).reshape(shape)) * scale.reshape(shape)
    return out


def assert_reload_equals_graph(out, names):
    """Each int8 weight reloaded equals the graph's dequantized int8 tensor bit for bit (maybe transposed)."""
    state = compressor.load(out).state_dict()
    graph = list(graph_weights(out / "model.onnx").values())
    report = read_report(out)
    encodings = next(a for a in report["artifacts"] if a["path"] == "model.safetensors")["encodings"]
    int8 = [n for n, e in encodings.items() if e == "int8"]
    assert set(names) <= set(int8), int8
    for name in int8:
        w = state[name].detach().numpy()
        assert any(np.array_equal(w, g) or (g.ndim == 2 and np.array_equal(w, g.T)) for g in graph), name


def test_auto_on_text_embedder_keeps_cosine_and_reloads_int8(tmp_path):
    out = tmp_path / "emb"
    res = run_cli(SAMPLES / "text_embedder.pt2", "--pipeline", "quantize", "--data", SAMPLES / "embed_heldout.npz",
                  "--train-data", SAMPLES / "embed_train.npz", "--max-drop", "100", "--out", out, "--quiet")
    assert res.code == 0, res
    stage = read_report(out)["stages"][-1]
    assert stage["metric_extra"]["cosine_min"] >= 0.98 and stage["metric_extra"]["cosine_mean"] >= 0.99, stage
    notes = " ".join(stage["notes"])
    assert "auto:" in notes
    st = next(a for a in read_report(out)["artifacts"] if a["path"] == "model.safetensors")
    assert st["bytes"] == (out / "model.safetensors").stat().st_size
    assert st["bytes"] < 0.35 * 4 * 242_560  # int8, not the 0.97 MB of fp32
    assert_reload_equals_graph(out, ["encoder.embed.weight"])


def test_auto_on_digits_cnn_keeps_static_qdq(tmp_path):
    out = tmp_path / "cnn"
    res = run_cli(SAMPLES / "digits_cnn.pt2", "--data", HELDOUT, "--train-data", TRAIN, "--out", out, "--quiet")
    assert res.code == 0, res
    report = read_report(out)
    assert "static QDQ on every op kept" in " ".join(report["stages"][-1]["notes"])
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert "QuantizeLinear" in ops and "MatMulInteger" not in ops
    assert report["stages"][-1]["metric_value"] >= report["baseline"]["value"] - 0.5
    assert_reload_equals_graph(out, ["fc1.weight", "fc2.weight", "fc3.weight"])


@pytest.mark.parametrize("axis,sparse", [(None, False), (0, False), (1, False), (1, True)])
def test_int8_encoding_round_trip(axis, sparse):
    g = torch.Generator().manual_seed(0)
    q = torch.randint(-127, 128, (5, 7), generator=g, dtype=torch.int8)
    if sparse:
        q[torch.rand(q.shape, generator=g) < 0.8] = 0
    n = 1 if axis is None else q.shape[axis]
    scale = torch.rand(n, generator=g).reshape(() if axis is None else (n,)) + 0.01
    weight = Int8Weight(q, scale, torch.zeros_like(scale, dtype=torch.int8), axis)
    tensors, rec = encode_int8("w", weight, torch.float32)
    assert "w::zero_point" not in tensors and tensors["w::q"].dtype == torch.int8
    assert rec["sparse"] == sparse and ("w::bitmask" in tensors) == sparse
    view = (1, 1) if axis is None else tuple(-1 if d == axis else 1 for d in range(2))
    expected = q.to(torch.float32) * scale.reshape(view)
    assert torch.equal(decode_int8("w", rec, tensors, torch.float32), expected)
