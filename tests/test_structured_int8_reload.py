"""After quantize, model.safetensors holds the structures' own tensors as the int8 graph does (docs/encodings.md,
"int8"): the rpg ring and a basis stack's coefficients reload bit for bit equal to what ONNX Runtime's
DequantizeLinear computes from model.onnx, and the ring / coefficients are stored in the `int8` encoding (one scale
per 128-slot row of the ring; one scale per block of columns of each coefficient set) so the file shrinks."""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import compressor
from compressor.algorithms.rpg.onnx_graph import ring_to_int8
from compressor.algorithms.rpg.ring_int8 import RING_INT8_BLOCK
from compressor.errors import ArtifactError
from compressor.export.int8_weights import match_int8
from compressor.io.data import load_dataset
from compressor.io.safetensors_io import read_weights, save_weights
from compressor.runtime.calls import onnx_predict, ort_session, predict
from tests.conftest import HELDOUT, SAMPLES, TRAIN, read_report, run_cli

TEXT_HELDOUT = SAMPLES / "text_heldout.npz"
TEXT_INPUTS = ["input_ids", "attention_mask"]


def _run(tmp_path_factory, tag: str, *args) -> Path:
    out = tmp_path_factory.mktemp(tag) / "out"
    res = run_cli(*args, "--out", out, "--quiet")
    assert res.code == 0, res
    return out


@pytest.fixture(scope="module")
def cnn_rpg(tmp_path_factory) -> Path:
    return _run(tmp_path_factory, "rpg", SAMPLES / "digits_cnn.pt2", "--pipeline", "rpg,quantize", "--data", HELDOUT,
                "--train-data", TRAIN, "--max-drop", "100", "--set", "rpg.epochs=1",
                "--set", "rpg.max_steps_per_epoch=5", "--set", "rpg.grow=false", "--set", "quantize.objective=size")


@pytest.fixture(scope="module")
def odenet_basis(tmp_path_factory) -> Path:
    return _run(tmp_path_factory, "odenet", SAMPLES / "digits_odenet.pt2", "--pipeline", "basis,quantize",
                "--data", HELDOUT, "--train-data", TRAIN, "--set", "quantize.objective=size")


@pytest.fixture(scope="module")
def text_basis(tmp_path_factory) -> Path:
    """A transformer stack: LayerNorm, no running statistics, so every coefficient slice is int8 in the graph."""
    return _run(tmp_path_factory, "text", SAMPLES / "text_classifier.pt2", "--pipeline", "basis,quantize",
                "--data", TEXT_HELDOUT, "--train-data", SAMPLES / "text_train.npz",
                "--val-data", SAMPLES / "text_val.npz", "--max-drop", "100", "--set", "basis.size=2",
                "--set", "basis.grow=false", "--set", "quantize.objective=size")


# ---- helpers: what the graph computes, what the file holds -------------------------------------------------------

def _meta(out: Path) -> dict:
    with safe_open(str(out / "model.safetensors"), "pt") as fh:
        return json.loads(fh.metadata()["compressor"])


def _header_bytes(path: Path) -> int:
    return 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]


def _ort_tensors(out: Path, names: list[str], data) -> dict[str, np.ndarray]:
    """The named intermediate tensors of model.onnx as ONNX Runtime computes them (DequantizeLinear's own
    arithmetic), exposed as extra graph outputs."""
    proto = onnx.load(str(out / "model.onnx"))
    proto.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    session = ort_session(proto.SerializeToString())
    feed = {i.name: data.inputs[i.name][:2].numpy() for i in session.get_inputs()}
    return dict(zip(names, session.run(names, feed)))


def _numpy_dequantized(out: Path, q: str, scale: str) -> np.ndarray:
    """q * scale in float32, one scale per row (a [rows, 1] column), from model.onnx's initializers."""
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(out / "model.onnx")).graph.initializer}
    assert inits[scale].shape == (inits[q].shape[0], 1)
    return inits[q].astype(np.float32) * inits[scale]


def _bitwise_equal(a: torch.Tensor, b: np.ndarray) -> bool:
    a = a.detach().to(torch.float32).contiguous().numpy()
    return a.shape == b.shape and np.array_equal(a.view(np.int32), np.ascontiguousarray(b, np.float32).view(np.int32))


def _graph_coef(out: Path, data) -> tuple[str, np.ndarray]:
    """The basis stack's coefficient matrix as the graph computes it: each int8 slice dequantized by ONNX Runtime,
    running statistics as the float initializers they are, in the layout's order."""
    (stack,) = [s for e in _meta(out)["structures"] if e["kind"] == "basis" for s in e["stacks"]]
    pre = f"basis/{stack['path']}/int8"
    params = [name for name, _, kind in stack["layout"] if kind == "param"]
    deq = _ort_tensors(out, [f"{pre}/{name}/deq" for name in params], data)
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(out / "model.onnx")).graph.initializer}
    parts = []
    for name, _, kind in stack["layout"]:
        if kind == "param":
            numpy_side = _numpy_dequantized(out, f"{pre}/{name}/q", f"{pre}/{name}/dequantize/scale")
            assert np.array_equal(deq[f"{pre}/{name}/deq"], numpy_side)  # ORT's DequantizeLinear is (q - zp) * s
            parts.append(deq[f"{pre}/{name}/deq"])
        else:
            parts.append(inits[f"{pre}/{name}/float"])
    return f"{stack['path']}.coef", np.concatenate(parts, axis=1)


def _outputs_close(out: Path, data) -> None:
    """compressor.load's module beside ONNX Runtime on the held-out data: the same weights, so what is left is the
    graph's int8 activations (static QDQ): every sample's outputs point the same way (cosine), none far off
    (a barely trained ring has near-tied logits, so the class is no measure)."""
    ort = onnx_predict(ort_session(out / "model.onnx"), data)
    torch_out = predict(compressor.load(out), data)
    assert float((ort - torch_out).abs().max()) < 0.1 * float(torch_out.abs().max())
    assert float(torch.nn.functional.cosine_similarity(ort, torch_out).min()) > 0.995


# ---- rpg ---------------------------------------------------------------------------------------------------------

def test_rpg_quantize_stores_the_graphs_int8_ring(cnn_rpg):
    meta, report = _meta(cnn_rpg), read_report(cnn_rpg)
    n = report["stages"][0]["ring_size"]
    rows = -(-n // RING_INT8_BLOCK)
    record = meta["encodings"]["rpg_ring"]
    assert record["encoding"] == "int8"
    assert (record["shape"], record["axis"], record["block"], record["bits"]) == ([n], 0, RING_INT8_BLOCK, 8)
    tensors = load_file(str(cnn_rpg / "model.safetensors"))
    assert "rpg_ring" not in tensors and tensors["rpg_ring::q"].dtype == torch.int8
    assert tensors["rpg_ring::q"].numel() == n and list(tensors["rpg_ring::scale"].shape) == [rows]

    held = load_dataset(HELDOUT, ["x"])
    graph_ring = _ort_tensors(cnn_rpg, ["rpg_ring"], held)["rpg_ring"]
    numpy_ring = _numpy_dequantized(cnn_rpg, "rpg_ring_int8", "rpg_gen/dequantize_ring/scale")
    assert np.array_equal(graph_ring, numpy_ring.reshape(-1)[:n])
    loaded = compressor.load(cnn_rpg).state_dict()["rpg_ring"]  # checks the re-pinned ring checksum too
    assert float(np.abs(loaded.numpy() - graph_ring).max()) == 0.0 and _bitwise_equal(loaded, graph_ring)
    assert report["artifacts"][1]["reload_max_abs_diff_vs_torch"] == 0.0

    # the file: the int8 ring (n + 4 per row) and every other tensor in float32 at most, plus its header; a float
    # ring alone (4n bytes) is far over that (3n = 161 KB more, against a header of a few KB)
    st = cnn_rpg / "model.safetensors"
    assert report["artifacts"][1]["bytes"] == st.stat().st_size
    others = sum(4 * t.numel() for k, t in tensors.items() if not k.startswith("rpg_ring::"))
    assert st.stat().st_size <= n + 4 * rows + others + _header_bytes(st)
    assert st.stat().st_size < 4 * n
    _outputs_close(cnn_rpg, held)


def test_a_flipped_byte_of_the_int8_ring_is_refused(cnn_rpg, tmp_path):
    with safe_open(str(cnn_rpg / "model.safetensors"), "pt") as fh:
        metadata = fh.metadata()
    tensors = load_file(str(cnn_rpg / "model.safetensors"))
    tensors["rpg_ring::q"][7] += 1
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata=metadata)
    with pytest.raises(ArtifactError, match="rpg_ring::q fails its checksum"):
        read_weights(tmp_path / "model.safetensors")


def test_a_ring_of_partial_rows_reloads_as_dequantize_reshape_slice():
    """n not a multiple of 128: the last row's padding is dropped; the reload equals ONNX Runtime's ring."""
    n = 3 * RING_INT8_BLOCK + 45
    ring = torch.from_numpy(np.random.default_rng(0).normal(size=n).astype(np.float32))
    graph = helper.make_graph([helper.make_node("Add", ["x", "rpg_ring"], ["y"])], "ring",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])],
                              [numpy_helper.from_array(ring.numpy(), "rpg_ring")])
    proto = ring_to_int8(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    state = {"rpg_ring": ring.clone()}
    weight = match_int8(proto, state)["rpg_ring"]
    assert (weight.block, weight.axis, list(weight.q.shape), list(weight.scale.shape)) == (RING_INT8_BLOCK, 0, [n], [4])
    graph_ring = ort_session(proto.SerializeToString()).run(["y"], {"x": np.zeros(n, np.float32)})[0]
    assert _bitwise_equal(weight.dequantize(), graph_ring)


def test_save_and_read_of_a_partial_ring_is_exact(tmp_path):
    n = 2 * RING_INT8_BLOCK + 1
    ring = torch.from_numpy(np.random.default_rng(1).normal(size=n).astype(np.float32))
    graph = helper.make_graph([helper.make_node("Identity", ["rpg_ring"], ["y"])], "ring", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])],
                              [numpy_helper.from_array(ring.numpy(), "rpg_ring")])
    proto = ring_to_int8(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    state = {"rpg_ring": ring, "fc.weight": torch.ones(3, 3)}
    records = save_weights(state, tmp_path / "w.safetensors", {}, int8=match_int8(proto, state))
    assert records["rpg_ring"]["encoding"] == "int8" and records["fc.weight"]["encoding"] == "dense"
    loaded, _ = read_weights(tmp_path / "w.safetensors")
    graph_ring = ort_session(proto.SerializeToString()).run(["y"], {})[0]
    assert _bitwise_equal(loaded["rpg_ring"], graph_ring) and torch.equal(loaded["fc.weight"], state["fc.weight"])


# ---- basis -------------------------------------------------------------------------------------------------------

def test_transformer_basis_quantize_stores_int8_coefficients(text_basis):
    meta, report = _meta(text_basis), read_report(text_basis)
    held = load_dataset(TEXT_HELDOUT, TEXT_INPUTS)
    name, graph_coef = _graph_coef(text_basis, held)
    k, width = graph_coef.shape
    record = meta["encodings"][name]
    assert record["encoding"] == "int8" and record["shape"] == [k, width] and record["axis"] == 1
    (stack,) = [s for e in meta["structures"] if e["kind"] == "basis" for s in e["stacks"]]
    assert record["block"] == math.gcd(*(math.prod(shape) for _, shape, _ in stack["layout"]))
    loaded = compressor.load(text_basis).state_dict()[name]
    assert float(np.abs(loaded.numpy() - graph_coef).max()) == 0.0 and _bitwise_equal(loaded, graph_coef)
    assert report["artifacts"][1]["reload_max_abs_diff_vs_torch"] == 0.0

    # int8 coefficients (k * width) with one float32 scale per block of each row; everything else float32 at most
    st = text_basis / "model.safetensors"
    tensors = load_file(str(st))
    assert report["artifacts"][1]["bytes"] == st.stat().st_size
    others = sum(4 * t.numel() for key, t in tensors.items() if not key.startswith(f"{name}::"))
    assert st.stat().st_size <= k * width * (1 + 4 / record["block"]) + others + _header_bytes(st)
    assert st.stat().st_size < 4 * k * width  # the float coefficients alone
    _outputs_close(text_basis, held.subset(torch.arange(256)))


def test_odenet_basis_quantize_reloads_the_graphs_coefficients(odenet_basis):
    """digits_odenet's stack projects batch-norm running statistics too: the graph keeps those columns float, so
    the matrix has no single int8 form; it is stored exactly as the graph computes it (int8 slices dequantized)."""
    held = load_dataset(HELDOUT, ["x"])
    name, graph_coef = _graph_coef(odenet_basis, held)
    loaded = compressor.load(odenet_basis).state_dict()[name]
    assert float(np.abs(loaded.numpy() - graph_coef).max()) == 0.0 and _bitwise_equal(loaded, graph_coef)
    assert read_report(odenet_basis)["artifacts"][1]["reload_max_abs_diff_vs_torch"] == 0.0
    _outputs_close(odenet_basis, held)
