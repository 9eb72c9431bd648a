"""quantize mode=auto (the default): safe on a transformer, still static QDQ on a CNN; int8 model.safetensors that
`compressor.load` rebuilds exactly as the int8 ONNX graph dequantizes its weights."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

import compressor
from compressor.algorithms.quantize.int4 import matmul_weights, write_nbits
from compressor.algorithms.quantize.weight_only import int8_weight_only
from compressor.export.int8_weights import graph_int8
from compressor.export.torch_onnx import export_onnx_proto
from compressor.io.data import load_dataset
from compressor.io.encodings import decode_state
from compressor.io.int8_encoding import Int8Weight, decode_int8, encode_int8
from compressor.io.load import load_model
from compressor.io.onnx_files import save_onnx
from tests.conftest import HELDOUT, SAMPLES, TRAIN, read_report, run_cli


def nbits_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The [K, N] weight each 4-bit MatMulNBits node computes with, as ONNX Runtime itself sees it: the node alone
    in a graph, fed the K x K identity (exact in float32), so the oracle is ORT's kernel, not our decoder."""
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        k = next(a.i for a in node.attribute if a.name == "K")
        n = next(a.i for a in node.attribute if a.name == "N")
        one = onnx.helper.make_node("MatMulNBits", ["x", *node.input[1:]], ["y"], domain="com.microsoft")
        one.attribute.extend(node.attribute)
        graph = onnx.helper.make_graph(
            [one], "w", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [k, k])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [k, n])],
            [inits[name] for name in node.input[1:] if name])
        proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17),
                                                             onnx.helper.make_opsetid("com.microsoft", 1)])
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        out[node.name] = session.run(None, {"x": np.eye(k, dtype=np.float32)})[0]
    return out


def graph_weights(path) -> dict[str, np.ndarray]:
    """(q - zero_point) * scale of every int8 weight, straight from the ONNX initializers (numpy, not our code),
    and each 4-bit weight as ONNX Runtime computes with it."""
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = nbits_weights(model)
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


def test_auto_on_text_embedder_keeps_cosine_at_a_fifth_of_the_bytes_and_reloads_exactly(tmp_path):
    """The bound under the default gate: cosine min >= 0.98, mean >= 0.99 at <= 0.21x the fp32 weights."""
    out = tmp_path / "emb"
    res = run_cli(SAMPLES / "text_embedder.pt2", "--pipeline", "quantize", "--data", SAMPLES / "embed_heldout.npz",
                  "--train-data", SAMPLES / "embed_train.npz", "--val-data", SAMPLES / "embed_val.npz",
                  "--out", out, "--quiet", "--set", "quantize.objective=size")
    assert res.code == 0, res
    report = read_report(out)
    stage = report["stages"][-1]
    assert stage["metric_extra"]["cosine_min"] >= 0.98 and stage["metric_extra"]["cosine_mean"] >= 0.99, stage
    notes = " ".join(stage["notes"])
    assert "4-bit weight-only on 24 of 24 MatMul weights" in notes and "auto:" in notes
    fp32 = 4 * 242_560
    onnx_art = next(a for a in report["artifacts"] if a["path"] == "model.onnx")
    assert min(onnx_art["bytes"], onnx_art["gzip_bytes"]) <= 0.21 * fp32, onnx_art
    st = next(a for a in report["artifacts"] if a["path"] == "model.safetensors")
    assert st["bytes"] == (out / "model.safetensors").stat().st_size
    assert st["bytes"] < 0.25 * fp32  # 4-bit packed two per byte, not the 0.97 MB of fp32
    assert_reload_equals_graph(out, ["encoder.embed.weight", "encoder.layers.0.ffn_in.weight"])


def test_weight_bits_8_keeps_every_weight_int8(tmp_path):
    out = tmp_path / "emb8"
    res = run_cli(SAMPLES / "text_embedder.pt2", "--pipeline", "quantize", "--data", SAMPLES / "embed_heldout.npz",
                  "--train-data", SAMPLES / "embed_train.npz", "--set", "quantize.weight_bits=8", "--out", out,
                  "--quiet", "--set", "quantize.objective=size")
    assert res.code == 0, res
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert "MatMulNBits" not in ops and "QuantizeLinear" in ops
    assert "4-bit" not in " ".join(read_report(out)["stages"][-1]["notes"])


def test_auto_on_digits_cnn_keeps_static_qdq(tmp_path):
    out = tmp_path / "cnn"
    res = run_cli(SAMPLES / "digits_cnn.pt2", "--data", HELDOUT, "--train-data", TRAIN, "--out", out, "--quiet",
                  "--set", "quantize.objective=size")
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


@pytest.mark.parametrize("axis,shape", [(0, (70, 6)), (1, (5, 33))])
def test_int4_encoding_round_trip_packs_two_values_a_byte(axis, shape):
    g = torch.Generator().manual_seed(1)
    q = torch.randint(-8, 8, shape, generator=g, dtype=torch.int8)
    block = 32
    scale_shape = list(shape)
    scale_shape[axis] = -(-shape[axis] // block)
    scale = torch.rand(scale_shape, generator=g) - 0.5  # MatMulNBits scales may be negative
    weight = Int8Weight(q, scale, torch.zeros_like(scale, dtype=torch.int8), axis, block, bits=4)
    tensors, rec = encode_int8("w", weight, torch.float32)
    assert rec["bits"] == 4 and tensors["w::q4"].dtype == torch.uint8
    assert tensors["w::q4"].numel() == -(-q.numel() // 2)
    expected = q.to(torch.float32) * scale.repeat_interleave(block, dim=axis).narrow(axis, 0, shape[axis])
    assert torch.equal(decode_int8("w", rec, tensors, torch.float32), expected)
    bad = dict(tensors, **{"w::scale": scale.flatten()})
    with pytest.raises(ValueError, match="blocks of 32"):
        decode_int8("w", rec, bad, torch.float32)


def test_write_nbits_turns_only_the_named_matmuls_to_4_bit(tmp_path):
    """ORT's `nodes_to_include` only adds to its op types: the partial 4-bit steps must exclude the rest."""
    loaded = load_model(SAMPLES / "text_embedder.pt2")
    src = tmp_path / "f.onnx"
    save_onnx(export_onnx_proto(loaded.module, load_dataset(SAMPLES / "embed_val.npz", loaded.input_names).example()),
              src)
    names = sorted(matmul_weights(onnx.load(str(src))))[:3]
    write_nbits(src, tmp_path / "q.onnx", names, 32)
    nbits = [n.name.removesuffix("_Q4") for n in onnx.load(str(tmp_path / "q.onnx")).graph.node
             if n.op_type == "MatMulNBits"]
    assert sorted(nbits) == names


@pytest.mark.parametrize("op,shape", [("Gemm", (4, 6)), ("Gemm", (6, 4))])
def test_int8_weight_only_keeps_activations_float_and_reloads_as_int8(op, shape):
    """auto's fallback for a node whose activation range defeats int8: the weight alone int8 (per output channel),
    dequantized in the graph; ORT computes x @ dq(W) exactly and the int8 form is found for model.safetensors."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=shape).astype(np.float32)
    attrs = {"transB": 1} if shape == (4, 6) else {}
    node = onnx.helper.make_node(op, ["x", "w"], ["y"], name="n", **attrs)
    graph = onnx.helper.make_graph(
        [node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3, 6])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3, 4])], [numpy_helper.from_array(w, "w")])
    model = int8_weight_only(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), ["n"])
    onnx.checker.check_model(model)
    assert "w" not in {i.name for i in model.graph.initializer}
    (found,) = graph_int8(model)
    assert found.q.dtype == torch.int8 and found.scale.numel() == 4
    deq = found.dequantize().numpy()  # [N, K]: a [K, N] B is stored transposed with transB=1 (see weight_only.py)
    assert deq.shape == (4, 6)
    assert np.abs(deq - (w if attrs else w.T)).max() <= np.abs(w).max() / 127  # within a step of the float weight
    x = rng.normal(size=(3, 6)).astype(np.float32)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, x @ deq.T, rtol=1e-5, atol=1e-5)


def test_8_bit_matmul_weight_only_computes_in_float(tmp_path):
    """A MatMul's int8 weight-only form is 8-bit MatMulNBits (ORT would fuse DequantizeLinear + MatMul into one that
    quantizes activations): the output is x @ dq(W) to float32 rounding, and the decoder reads the same weight."""
    rng = np.random.default_rng(1)
    w = rng.normal(size=(96, 5)).astype(np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="n")], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3, 96])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3, 5])], [numpy_helper.from_array(w, "w")])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(tmp_path / "f.onnx"))
    write_nbits(tmp_path / "f.onnx", tmp_path / "q.onnx", ["n"], 32, bits=8)
    model = onnx.load(str(tmp_path / "q.onnx"))
    (found,) = graph_int8(model)
    assert found.bits == 8 and found.block == 32
    deq = found.dequantize().numpy()
    np.testing.assert_array_equal(deq, list(nbits_weights(model).values())[0])
    assert np.abs(deq - w).max() <= np.abs(w).max() / 127 * 1.01
    x = rng.normal(size=(3, 96)).astype(np.float32)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, x @ deq, rtol=1e-5, atol=1e-5)


def _graph(nodes, inputs, outputs, inits):
    graph = onnx.helper.make_graph(nodes, "g", [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s)
                                                for n, s in inputs],
                                   [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s)
                                    for n, s in outputs], [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


def test_a_weight_shared_by_two_matmuls_can_take_two_widths(tmp_path):
    """4-bit on one reader, 8-bit weight-only on the other (ALBERT-style shared layers): ORT names the scales after
    the initializer, so each reader gets its own copy first."""
    rng = np.random.default_rng(2)
    w = rng.normal(size=(64, 8)).astype(np.float32)
    model = _graph([onnx.helper.make_node("MatMul", ["x", "w"], ["h"], name="mm1"),
                    onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="mm2")],
                   [("x", [2, 64])], [("h", [2, 8]), ("y", [2, 8])], {"w": w})
    onnx.save(model, str(tmp_path / "f.onnx"))
    write_nbits(tmp_path / "f.onnx", tmp_path / "a.onnx", ["mm1"], 32)
    write_nbits(tmp_path / "a.onnx", tmp_path / "b.onnx", ["mm2"], 128, bits=8)
    x = rng.normal(size=(2, 64)).astype(np.float32)
    h, y = ort.InferenceSession(str(tmp_path / "b.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert np.abs(h - x @ w).max() < 0.2 * np.abs(x @ w).max()  # 4-bit
    assert np.abs(y - x @ w).max() < 0.02 * np.abs(x @ w).max()  # 8-bit


def test_int8_weight_only_names_never_collide():
    """A Gemm whose [K, N] weight `a` is stored transposed must not take the place of another weight named like
    the transposed copy."""
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(4, 6)).astype(np.float32)
    model = _graph([onnx.helper.make_node("Gemm", ["x", "a"], ["y1"], name="g1"),
                    onnx.helper.make_node("Gemm", ["x", "a_woT_quantized"], ["y2"], name="g2", transB=1)],
                   [("x", [3, 6])], [("y1", [3, 4]), ("y2", [3, 4])], {"a": a, "a_woT_quantized": b})
    model = int8_weight_only(model, ["g1", "g2"])
    onnx.checker.check_model(model)
    x = rng.normal(size=(3, 6)).astype(np.float32)
    y1, y2 = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(y1, x @ a, rtol=0.05, atol=0.05)
    np.testing.assert_allclose(y2, x @ b.T, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("change", [{"shape": None}, {"shape": [None, 4]}, {"axis": [0]}, {"block": 2.5},
                                    {"bits": 3}, {"q4": torch.zeros(16, dtype=torch.bfloat16)}])
def test_malformed_block_records_are_artifact_errors(change):
    weight = Int8Weight(torch.zeros(32, 4, dtype=torch.int8), torch.ones(1, 4), torch.zeros(1, 4, dtype=torch.int8),
                        0, 32, bits=4)
    tensors, rec = encode_int8("w", weight, torch.float32)
    if "q4" in change:
        tensors["w::q4"] = change.pop("q4")
    rec.update(change)
    with pytest.raises(compressor.ArtifactError):
        decode_state(tensors, {"w": rec})


def test_a_huge_block_costs_no_more_memory_than_the_weight():
    weight = Int8Weight(torch.ones(8, 2, dtype=torch.int8), torch.ones(1, 2), torch.zeros(1, 2, dtype=torch.int8),
                        0, 1 << 40, bits=8)
    assert torch.equal(weight.dequantize(), torch.ones(8, 2))


def _affine_graph(path, weight: np.ndarray) -> None:
    """y = x W: a float graph standing in for a quantized candidate (its outputs are whatever W makes them)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
                              [numpy_helper.from_array(weight.astype(np.float32), "W")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


def test_auto_check_stops_a_failing_candidate_early_with_the_whole_sets_decision(tmp_path):
    from compressor.algorithms.quantize.output_check import CHECK_CHUNK, checker
    from compressor.io.data import Dataset

    gen = np.random.default_rng(0)
    check = Dataset({"x": torch.from_numpy(gen.standard_normal((4 * CHECK_CHUNK, 8)).astype(np.float32))}, None, "t")
    _affine_graph(tmp_path / "float.onnx", np.eye(8))
    passes = checker(tmp_path / "float.onnx", check, (0.985, 0.995))
    _affine_graph(tmp_path / "same.onnx", np.eye(8))
    ok, how = passes(tmp_path / "same.onnx")
    assert ok and "first" not in how
    _affine_graph(tmp_path / "bad.onnx", np.eye(8) + 0.5 * gen.standard_normal((8, 8)))
    ok, how = passes(tmp_path / "bad.onnx")
    assert not ok and f"on the first {CHECK_CHUNK} of {4 * CHECK_CHUNK} samples" in how, how
    # a slightly perturbed graph fails only on the mean over the whole set: decided where the mean can no longer pass
    _affine_graph(tmp_path / "near.onnx", np.eye(8) + 0.06 * gen.standard_normal((8, 8)))
    ok, how = passes(tmp_path / "near.onnx")
    from compressor.algorithms.quantize.output_check import output_cosine
    from compressor.runtime.calls import onnx_predict, ort_session
    full = output_cosine(onnx_predict(ort_session(tmp_path / "near.onnx"), check), passes.ref)
    assert ok == (full[0] >= 0.985 and full[1] >= 0.995), (how, full)


def test_auto_check_of_a_regression_output_stops_early_only_when_decided(tmp_path):
    from onnx import TensorProto, helper

    from compressor.algorithms.quantize.output_check import CHECK_CHUNK, checker, output_error
    from compressor.io.data import Dataset
    from compressor.runtime.calls import onnx_predict, ort_session

    def graph(path, w):
        g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
                              [numpy_helper.from_array(w.astype(np.float32).reshape(8, 1), "W")])
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))

    gen = np.random.default_rng(1)
    check = Dataset({"x": torch.from_numpy(gen.standard_normal((4 * CHECK_CHUNK, 8)).astype(np.float32))}, None, "t")
    w = gen.standard_normal(8)
    graph(tmp_path / "float.onnx", w)
    passes = checker(tmp_path / "float.onnx", check, (0.985, 0.995))
    assert passes.narrow
    for name, scale, early in (("bad", 1.0, True), ("close", 1e-3, False)):
        graph(tmp_path / f"{name}.onnx", w + scale * gen.standard_normal(8))
        ok, how = passes(tmp_path / f"{name}.onnx")
        rel, worst = output_error(onnx_predict(ort_session(tmp_path / f"{name}.onnx"), check), passes.ref)
        assert ok == (rel <= passes.limits[0] and worst <= passes.limits[1]), (how, rel, worst)
        assert ("on the first" in how) == early, how
