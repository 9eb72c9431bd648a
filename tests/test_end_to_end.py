"""The foundation's promises on the real sample models: outputs, sizes, accuracy, reproducibility, reload."""
from __future__ import annotations

import gzip
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import torch

import compressor
from compressor.io.data import load_dataset
from compressor.io.load import load_model
from compressor.runtime.calls import predict
from compressor.report.build import human_bytes
from tests.conftest import HELDOUT, ROOT, SAMPLES, TRAIN, read_report, run_cli

REQUIRED_KEYS = {"baseline", "stages", "artifacts", "gate", "environment"}


def test_cnn_pt2_quantize_writes_everything(cnn_quantized):
    out = cnn_quantized
    for name in ("model.onnx", "model.safetensors", "report.json", "report.md"):
        assert (out / name).is_file(), name
    assert not list(out.parent.glob(".out.tmp-*")), "staging directory left behind"
    report = read_report(out)
    assert REQUIRED_KEYS <= set(report)
    assert {"metric", "value", "params", "bytes"} <= set(report["baseline"])
    for stage in report["stages"]:
        assert {"name", "metric_value", "params", "nonzeros", "dof", "seconds"} <= set(stage)
    onnx_art = report["artifacts"][0]
    assert {"path", "bytes", "gzip_bytes", "metric_value", "latency_ms"} <= set(onnx_art)
    assert onnx_art["bytes"] == (out / "model.onnx").stat().st_size
    assert onnx_art["gzip_bytes"] == len(gzip.compress((out / "model.onnx").read_bytes(), 9, mtime=0))
    # int8 really shrinks the file, and costs at most one point measured in ONNX Runtime
    assert onnx_art["bytes"] <= 0.35 * onnx_art["fp32_export_bytes"]
    assert report["baseline"]["value"] - onnx_art["metric_value"] <= 1.0
    assert report["baseline"]["value"] >= 95.0
    assert onnx_art["parity_max_abs_diff_fp32_vs_torch"] < 1e-3
    assert {"compressor", "torch", "onnx", "onnxruntime"} <= set(report["environment"])
    assert report["gate"]["passed"] is True
    md = (out / "report.md").read_text()
    assert "PASS" in md and "| quantize |" in md


def test_onnx_is_int8_checked_self_contained_and_dynamic(cnn_quantized):
    model = onnx.load(str(cnn_quantized / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    int8 = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert sum(np.prod(i.dims) for i in int8) > 50_000, "weights are not stored as int8"
    assert not list(cnn_quantized.glob("*.onnx.data"))
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value, "batch dimension is not dynamic"
    for node in model.graph.node:
        assert not node.metadata_props and not node.doc_string
    sess = ort.InferenceSession(str(cnn_quantized / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        out = sess.run(None, {sess.get_inputs()[0].name: np.zeros((batch, 1, 8, 8), np.float32)})[0]
        assert out.shape == (batch, 10)


def test_load_reproduces_the_saved_model(cnn_quantized):
    model = compressor.load(cnn_quantized)
    data = load_dataset(HELDOUT, ["x"])
    original = load_model(SAMPLES / "digits_cnn.pt2").module
    # quantize stores the int8 weights in model.safetensors: load() runs them dequantized, close to the original
    ours, theirs = predict(model, data), predict(original, data)
    assert not torch.equal(ours, theirs) and (ours.argmax(1) == theirs.argmax(1)).float().mean() >= 0.98
    assert read_report(cnn_quantized)["artifacts"][1]["reload_max_abs_diff_vs_torch"] == 0.0


def test_same_seed_gives_byte_identical_artifacts(cnn_quantized, tmp_path):
    out = tmp_path / "again"
    res = run_cli(SAMPLES / "digits_cnn.pt2", "--pipeline", "quantize", "--data", HELDOUT, "--train-data", TRAIN,
                  "--out", out, "--quiet", "--set", "quantize.objective=size")
    assert res.code == 0, res
    for name in ("model.onnx", "model.safetensors"):
        assert (out / name).read_bytes() == (cnn_quantized / name).read_bytes(), name


def test_mlp_state_dict_with_arch_module_and_file_forms(tmp_path):
    out = tmp_path / "mlp"
    res = run_cli(SAMPLES / "digits_mlp.pt", "--arch", "sample_models.digits_models:mlp", "--pipeline", "quantize",
                  "--data", HELDOUT, "--train-data", TRAIN, "--out", out, "--quiet", "--set", "quantize.objective=size",
                  cwd=ROOT)
    assert res.code == 0, res
    assert res.stdout.strip().startswith("PASS"), "--quiet prints only the verdict line"
    report = read_report(out)
    onnx_art = report["artifacts"][0]
    assert onnx_art["bytes"] <= 0.35 * onnx_art["fp32_export_bytes"]
    assert report["baseline"]["value"] - onnx_art["metric_value"] <= 1.0
    assert report["baseline"]["value"] >= 95.0
    reloaded = compressor.load(out, trust_code=True)  # our own --arch: opting in to import it
    data = load_dataset(HELDOUT, ["x"])
    sd = torch.load(SAMPLES / "digits_mlp.pt", weights_only=True)
    # quantize stores int8 weights: the reload holds them dequantized, within one quantization step of the original
    assert all(torch.allclose(reloaded.state_dict()[k], v, atol=(v.abs().max() / 127).item()) for k, v in sd.items())
    assert report["artifacts"][1]["reload_max_abs_diff_vs_torch"] == 0.0
    # the file form of --arch, dynamic mode
    out2 = tmp_path / "mlp2"
    res = run_cli(SAMPLES / "digits_mlp.pt", "--arch", f"{SAMPLES / 'digits_models.py'}:mlp",
                  "--set", "quantize.mode=dynamic", "--data", HELDOUT, "--out", out2, "--quiet")
    assert res.code == 0, res
    assert "dynamic int8" in read_report(out2)["stages"][0]["notes"][0]
    from sample_models.digits_models import mlp

    assert predict(compressor.load(out2, model=mlp()), data).shape == (360, 10)


def test_console_script_version():
    res = subprocess.run([sys.executable, "-m", "compressor.cli", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == f"compressor {compressor.__version__}"


def test_stages_and_inspect_commands(cnn_quantized):
    res = run_cli("stages")
    assert res.code == 0, res
    assert "quantize.mode = auto" in res.stdout and "quantize.exclude" in res.stdout
    res = run_cli("inspect", SAMPLES / "digits_cnn.pt2")
    assert res.code == 0, res
    assert "conv2.weight" in res.stdout and "conv" in res.stdout and "fc1.weight" in res.stdout
    # inspect's total counts what the report counts: the batch-norm statistics too
    total = next(line for line in res.stdout.splitlines() if "total (as the report counts)" in line)
    baseline = read_report(cnn_quantized)["baseline"]
    assert f"{baseline['params']:,}" in total and human_bytes(baseline["bytes"]) in total
    assert "buffers (6)" in res.stdout


def test_gate_failure_exits_3_and_still_reports(tmp_path):
    out = tmp_path / "gate"
    res = run_cli(SAMPLES / "digits_mlp.pt2", "--set", "quantize.mode=dynamic", "--data", HELDOUT, "--out", out,
                  "--floor", "cosine_min=1.0", "--quiet")  # --max-drop -1 is a usage error (exit 2)
    assert res.code == 3, res
    report = read_report(out)
    assert report["gate"]["passed"] is False and report["gate"]["failed"] == ["floor:cosine_min"]
    assert "FAIL" in (out / "report.md").read_text()
