"""Benchmark: is each int8 form portable across x86 CPUs, and is it faster than fp32 here?

For each model and quantize form, in one run: ONNX Runtime latency beside the fp32 export's (1 thread, batch 64,
median), held-out accuracy and cosine to the fp32 outputs, how much a sample's outputs move with the batch it runs
in (batch 1 vs 64), and the largest difference between this CPU's outputs and those of the same file on an AVX2
CPU without AVX-512 or VNNI, emulated by QEMU user mode (`qemu-x86_64 -cpu EPYC-Rome`; apt package qemu-user),
with the argmax flips between the two. ONNX Runtime picks its int8 kernels by CPU features, and on x86 without VNNI
its u8s8 kernels can saturate (docs/ALGORITHMS.md §5); 7-bit weights (quantize.reduce_range, the default) cannot.

    python -m bench.portable            (writes bench/results/portable.md; all-MiniLM-L6-v2 if its package is
                                          installed, see bench/minilm.py)
    python -m bench.portable --models digits_mlp,digits_cnn
                                         (reruns those models' rows; the other models' rows are kept from the file)
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from bench.minilm import model_and_splits
from compressor.algorithms.quantize.config import QuantizeConfig
from compressor.algorithms.quantize.stage import quantize_onnx
from compressor.export.torch_onnx import export_onnx_proto
from compressor.io.data import Dataset, load_dataset
from compressor.io.load import load_model
from compressor.io.onnx_files import save_onnx
from compressor.report.cpu import cpu_info
from compressor.runtime.calls import onnx_predict, ort_session
from compressor.runtime.timing import ort_latency_ms

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
AVX2_CPU = "EPYC-Rome"  # QEMU's model of an AMD EPYC 7002: AVX2, no AVX-512, no VNNI
EMULATED = 16           # samples run under emulation (TCG is slow); 2 for a model over 5M parameters
EMULATION_SECONDS = 900
MINILM = "all-MiniLM-L6-v2"
FORMS = {
    "auto, balanced (default)": QuantizeConfig(),
    "auto, objective size": QuantizeConfig(objective="size"),
    "auto, objective size, 8-bit weights": QuantizeConfig(objective="size", reduce_range=False),
    "static QDQ, 7-bit weights": QuantizeConfig(mode="static"),
    "static QDQ, 8-bit weights": QuantizeConfig(mode="static", reduce_range=False),
    "dynamic, 7-bit weights": QuantizeConfig(mode="dynamic"),
    "dynamic, 8-bit weights": QuantizeConfig(mode="dynamic", reduce_range=False),
}
RUN_FEED = """
import sys, numpy as np, onnxruntime as ort
so = ort.SessionOptions(); so.intra_op_num_threads = 1
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
feed = dict(np.load(sys.argv[2]))
np.save(sys.argv[3], s.run(None, {i.name: feed[i.name] for i in s.get_inputs()})[0])
"""


def sample_models(wanted: set[str] | None = None):
    """(name, module, {train, val, heldout}) for each model of the table (those in `wanted`, if given)."""
    for name, files in (("digits_mlp", "digits"), ("digits_cnn", "digits"), ("text_classifier", "text"),
                        ("text_embedder", "embed")):
        if wanted is not None and name not in wanted:
            continue
        loaded = load_model(SAMPLES / f"{name}.pt2")
        splits = {k: load_dataset(SAMPLES / f"{files}_{k}.npz", loaded.input_names, loaded.input_dtypes)
                  for k in ("train", "val", "heldout")}
        yield name, loaded.module, splits
    minilm = model_and_splits() if wanted is None or MINILM in wanted else None
    if minilm is not None:
        yield MINILM, minilm[0], minilm[1]


def feed_of(session, data: Dataset) -> dict[str, np.ndarray]:
    names = [i.name for i in session.get_inputs()]
    values = [v.numpy() for v in data.inputs.values()]
    return dict(zip(names, values)) if set(names) != set(data.inputs) else {n: data.inputs[n].numpy() for n in names}


def emulated_outputs(path: Path, feed: dict[str, np.ndarray], tmp: Path) -> np.ndarray | None:
    """The file's outputs on `feed` computed on an emulated AVX2 CPU, or None without qemu-x86_64 or when the
    emulation takes longer than EMULATION_SECONDS."""
    if shutil.which("qemu-x86_64") is None:
        return None
    np.savez(tmp / "feed.npz", **feed)
    try:
        subprocess.run(["qemu-x86_64", "-cpu", AVX2_CPU, sys.executable, "-c", RUN_FEED, str(path),
                        str(tmp / "feed.npz"), str(tmp / "out.npy")], check=True, capture_output=True,
                       timeout=EMULATION_SECONDS)
    except subprocess.TimeoutExpired:
        return None
    return np.load(tmp / "out.npy")


def one_by_one(session, feed: dict[str, np.ndarray]) -> np.ndarray:
    n = len(next(iter(feed.values())))
    return np.concatenate([session.run(None, {k: v[i:i + 1] for k, v in feed.items()})[0] for i in range(n)])


def row(name: str, label: str, path: Path, held: Dataset, fp32_out: torch.Tensor, fp32_ms: float, tmp: Path,
        emulated: int = EMULATED) -> list:
    session = ort_session(path, threads=1)
    out = onnx_predict(session, held)
    flat, ref = out.reshape(len(out), -1).double(), fp32_out.reshape(len(fp32_out), -1).double()
    cos = torch.nn.functional.cosine_similarity(flat, ref, dim=1)
    acc = "-" if held.labels is None or out.ndim != 2 else f"{(out.argmax(1) == held.labels).float().mean() * 100:.2f}"
    ms = ort_latency_ms(session, held, repeats=30)
    batch = held.subset(torch.arange(min(64, len(held))), "first 64")
    feed = feed_of(session, batch)
    whole = session.run(None, feed)[0]
    batch_drift = float(np.abs(one_by_one(session, feed) - whole).max())
    small = {k: v[:emulated] for k, v in feed.items()}
    here = session.run(None, small)[0]
    avx2 = emulated_outputs(path, small, tmp)
    emu = "-" if avx2 is None else f"{float(np.abs(avx2 - here).max()):.3g}"
    flips = "-" if avx2 is None or here.ndim != 2 else str(int((avx2.argmax(1) != here.argmax(1)).sum()))
    emu = emu if avx2 is None else f"{emu} ({emulated})"
    return [name, label, f"{path.stat().st_size:,}", f"{ms:.3f}", f"{ms / fp32_ms:.2f}", acc,
            f"{cos.min():.4f} / {cos.mean():.4f}", f"{batch_drift:.3g}", emu, flips]


def main() -> str:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=None, help="comma-separated names; the others' rows are kept")
    wanted = parser.parse_args().models
    wanted = set(wanted.split(",")) if wanted else None
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, module, splits in sample_models(wanted):
            held = splits["heldout"]
            fp32 = tmp / f"{name}.onnx"
            save_onnx(export_onnx_proto(module, held.example()), fp32)
            fp32_session = ort_session(fp32, threads=1)
            fp32_out = onnx_predict(fp32_session, held)
            fp32_ms = ort_latency_ms(fp32_session, held, repeats=30)
            emulated = EMULATED if sum(p.numel() for p in module.parameters()) <= 5_000_000 else 2
            rows.append(row(name, "fp32 export", fp32, held, fp32_out, fp32_ms, tmp, emulated))
            for label, cfg in FORMS.items():
                dst = tmp / f"{name}-{len(rows)}.onnx"
                quantize_onnx(fp32, dst, cfg, splits["train"], seed=0, check=splits["val"])
                rows.append(row(name, label, dst, held, fp32_out, fp32_ms, tmp, emulated))
            write(rows, wanted)
    return write(rows, wanted)


def kept_rows(wanted: set[str]) -> list[list[str]]:
    """The rows of bench/results/portable.md for the models not rerun (a partial run keeps them)."""
    path = ROOT / "bench" / "results" / "portable.md"
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.startswith("| ") and not line.startswith("| model")]
    return [cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines)
            if cells[0] not in wanted]


def write(rows: list[list[str]], wanted: set[str] | None = None) -> str:
    """The table so far, printed and written to bench/results/portable.md (after each model: a long emulation
    cut short keeps the rows before it). With `wanted`, the other models' rows are kept from the file, in the
    table's model order."""
    if wanted is not None:
        order = ["digits_mlp", "digits_cnn", "text_classifier", "text_embedder", MINILM]
        rows = sorted(rows + kept_rows(wanted), key=lambda r: order.index(r[0]) if r[0] in order else len(order))
    header = ["model", "form", "ONNX bytes", "ORT ms", "x fp32 ms", "held-out acc %", "cosine to fp32 min / mean",
              "max |batch 1 - batch 64|", "max |AVX2 - here| (samples)", "argmax flips AVX2 vs here"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    cpu = cpu_info()
    text = (f"# bench/portable.py\n\nMeasured on {cpu['cpu']}, features: {cpu['cpu_features']}; ONNX Runtime "
            f"{ort.__version__}, 1 thread, batch 64 (latency: median of 30). The AVX2 column runs the same file "
            f"under `qemu-x86_64 -cpu {AVX2_CPU}` (no AVX-512, no VNNI; '-': qemu absent or over "
            f"{EMULATION_SECONDS} s). \"auto, balanced (default)\" is what `--pipeline quantize` ships; its latency choice is made on this machine at the time of the run.\n\n"
            + "\n".join(lines) + "\n")
    print(text, flush=True)
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "portable.md").write_text(text)
    return text


if __name__ == "__main__":
    main()
