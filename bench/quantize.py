"""Benchmark: fp32 vs int8 ONNX bytes, held-out accuracy and ONNX Runtime latency (batch 64, median of repeats)
for each quantization mode of compressor, beside ONNX Runtime's `quantize_dynamic` run directly on the plain
export, for each sample model, in one run.

    python -m bench.quantize            (writes bench/results/quantize.md too)
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from compressor.algorithms.quantize.stage import QuantizeConfig, quantize_onnx
from compressor.export.torch_onnx import export_onnx_proto
from compressor.io.data import load_dataset
from compressor.io.load import load_model
from compressor.io.onnx_files import save_onnx
from compressor.judge.metrics import evaluate_onnx
from compressor.runtime.calls import ort_session
from compressor.runtime.timing import ort_latency_ms

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
MODES = {
    "ours auto, balanced (default; chosen by timing here)": QuantizeConfig(),
    "ours auto, objective size": QuantizeConfig(objective="size"),
    "ours static QDQ per-channel": QuantizeConfig(mode="static"),
    "ours static QDQ per-tensor": QuantizeConfig(mode="static", per_channel=False),
    "ours static QOperator per-channel": QuantizeConfig(mode="static", format="QOperator"),
    "ours static QDQ Entropy": QuantizeConfig(mode="static", calibration="Entropy"),
    "ours dynamic per-channel": QuantizeConfig(mode="dynamic"),
}


def main() -> str:
    torch.set_num_threads(2)
    held = load_dataset(SAMPLES / "digits_heldout.npz", ["x"])
    train = load_dataset(SAMPLES / "digits_train.npz", ["x"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in ("digits_mlp", "digits_cnn", "digits_resnet"):
            model = load_model(SAMPLES / f"{name}.pt2").module
            fp32 = tmp / f"{name}.onnx"
            save_onnx(export_onnx_proto(model, held.example()), fp32)
            variants = {"fp32 export": fp32}
            for label, cfg in MODES.items():
                dst = tmp / f"{name}-{len(variants)}.onnx"
                quantize_onnx(fp32, dst, cfg, train, seed=0)
                variants[label] = dst
            from onnxruntime.quantization import quantize_dynamic

            base = tmp / f"{name}-ort-dynamic.onnx"
            quantize_dynamic(str(fp32), str(base))
            variants["baseline: ORT quantize_dynamic on plain export"] = base
            for label, path in variants.items():
                sess = ort_session(path)
                acc = evaluate_onnx(sess, held, None).value
                size = path.stat().st_size
                rows.append([name, label, f"{size:,}", f"{size / fp32.stat().st_size:.2f}", f"{acc:.2f}",
                             f"{ort_latency_ms(sess, held, repeats=50):.3f}"])
    header = ["model", "variant", "ONNX bytes", "x fp32", "held-out acc %", "ORT ms (batch 64, median)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    table = "\n".join(lines)
    print(table)
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "quantize.md").write_text(
        "# bench/quantize.py (2 CPU cores, torch %s)\n\n%s\n" % (torch.__version__, table))
    return table


if __name__ == "__main__":
    main()
