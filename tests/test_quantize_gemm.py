"""Dynamic int8 on a Linear layer exported as Gemm: ORT's dynamic quantizer has no Gemm kernel, so the layer stayed
float while the report said dynamic int8. gemm.py rewrites the chosen Gemms as MatMul + Add (exact), which it does
quantize."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from compressor.algorithms.quantize.gemm import gemms_as_matmul
from tests.conftest import HELDOUT, SAMPLES, read_report, run_cli


def _gemm_model(trans_b: int, beta: float) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 3) if trans_b else (3, 5)).astype(np.float32)
    c = rng.standard_normal(5).astype(np.float32)
    node = helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="fc", transB=trans_b, beta=beta)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 5])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(c, "c")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_gemm_rewrite_is_exact_and_keeps_the_node_name():
    x = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    for trans_b, beta in ((1, 1.0), (0, 0.5)):
        model = _gemm_model(trans_b, beta)
        new, n = gemms_as_matmul(model)
        onnx.checker.check_model(new)
        assert n == 1 and [nd.op_type for nd in new.graph.node] == ["MatMul", "Add"]
        assert new.graph.node[0].name == "fc"
        np.testing.assert_allclose(_run(new, x), _run(model, x), rtol=1e-5, atol=1e-6)
    assert gemms_as_matmul(_gemm_model(1, 1.0), names=["other"])[1] == 0


def test_dynamic_mode_quantizes_a_gemm_mlp(tmp_path):
    out = tmp_path / "dyn"
    res = run_cli(SAMPLES / "digits_mlp.pt2", "--set", "quantize.mode=dynamic", "--data", HELDOUT, "--out", out,
                  "--quiet")
    assert res.code == 0, res
    ops = [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node]
    assert "Gemm" not in ops and ops.count("MatMulInteger") + ops.count("DynamicQuantizeMatMul") >= 3, ops
    assert (out / "model.onnx").stat().st_size < 0.4 * read_report(out)["baseline"]["bytes"]  # int8 ~ 0.25x
