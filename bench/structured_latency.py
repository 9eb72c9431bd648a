"""Benchmark: how fast ring (rpg) and basis artifacts run beside the dense fp32 original, per quantize objective.

A ring or basis model.onnx computes its weights in-graph from the compact tensors (the int8 ring through a seeded
permutation, the basis coefficients times the basis functions); ONNX Runtime folds that constant subgraph once at
session start, so the question is what quantize adds around it. Each row is one `compress` run of the CLI; its
report gives model.onnx's latency and the fp32 original's, both measured by that run on this machine (ONNX Runtime,
batch 64, the run's one thread).

    python -m bench.structured_latency      (writes bench/results/structured_latency.md)
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.tables import write_table
from compressor.report.cpu import cpu_info

ROOT = Path(__file__).resolve().parents[1]
S = ROOT / "sample_models"
DIGITS = ["--data", str(S / "digits_heldout.npz"), "--train-data", str(S / "digits_train.npz"),
          "--val-data", str(S / "digits_val.npz")]
TEXT = ["--data", str(S / "text_heldout.npz"), "--train-data", str(S / "text_train.npz"),
        "--val-data", str(S / "text_val.npz")]
RUNS = {
    "digits_cnn rpg,quantize": [str(S / "digits_cnn.pt2"), "--pipeline", "rpg,quantize", *DIGITS],
    "digits_odenet basis,quantize": [str(S / "digits_odenet.pt2"), "--pipeline", "basis,quantize", *DIGITS],
    "text_classifier basis,quantize": [str(S / "text_classifier.pt2"), "--pipeline", "basis,quantize", *TEXT,
                                       "--set", "basis.size=2", "--set", "basis.grow=false", "--max-drop", "5"],
}
OBJECTIVES = ("balanced", "size")


def one(args: list[str], objective: str, out: Path) -> list[str]:
    proc = subprocess.run([sys.executable, "-m", "compressor", *args, "--set", f"quantize.objective={objective}",
                           "--out", str(out), "--quiet", "--force"], capture_output=True, text=True)
    if proc.returncode not in (0, 3):
        return ["-", "-", "-", "-", "-", proc.stderr.strip().splitlines()[-1][:80]]
    report = json.loads((out / "report.json").read_text())
    onnx = report["artifacts"][0]
    ms, base = onnx["latency_ms"], onnx["fp32_baseline_latency_ms"]
    chose = next((n.split(":", 1)[1].split("(")[0].strip() for s in report["stages"] for n in s["notes"]
                  if n.startswith(f"objective {objective}:") and " ms" in n), "-")
    return [f"{onnx['bytes']:,}", f"{ms:.3f}", f"{base:.3f}", f"{ms / base:.2f}",
            f"{report['stages'][-1]['metric_value']:.2f}", chose]


def main() -> str:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, args in RUNS.items():
            for objective in OBJECTIVES:
                rows.append([label, objective, *one(args, objective, Path(tmp) / "out")])
                print(" | ".join(rows[-1]), flush=True)
    header = ["run", "quantize.objective", "model.onnx bytes", "ORT ms", "fp32 original ms", "x fp32",
              "held-out metric", "objective's choice"]
    cpu = cpu_info()
    return write_table("structured_latency", f"Measured on {cpu['cpu']}, features: {cpu['cpu_features']}; each row "
                       "one `compress` run with its defaults (ONNX Runtime, 1 thread, batch 64; both latencies from "
                       "that run's report).", header, rows)


if __name__ == "__main__":
    main()
