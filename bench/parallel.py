"""Benchmark: data-parallel fine-tuning (`--nproc 2`, DDP over gloo on this machine's CPU cores) beside the same run in
one process, measured in one run: wall time of the whole command, the stage's own seconds, what the stage reached
and the held-out result, so a speed-up is only claimed with the result it bought.

    python -m bench.parallel            (writes bench/results/parallel.md)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compressor.report.cpu import cpu_info

ROOT = Path(__file__).resolve().parents[1]
S = ROOT / "sample_models"
CASES = {
    "text_embedder prune to 50%": [str(S / "text_embedder.pt2"), "--pipeline", "prune", "--data",
                                   str(S / "embed_heldout.npz"), "--train-data", str(S / "embed_train.npz"),
                                   "--set", "prune.target=0.5", "--set", "prune.codebook=off"],
    "digits_cnn shrink,prune": [str(S / "digits_cnn.pt2"), "--pipeline", "shrink,prune", "--data",
                                str(S / "digits_heldout.npz"), "--train-data", str(S / "digits_train.npz"),
                                "--set", "prune.codebook=off"],
}


def run(args: list[str], nproc: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "compressor", *args, "--out", str(out), "--quiet", "--nproc", str(nproc)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    wall = time.perf_counter() - start
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else {}
    stages = report.get("stages", [])
    return {"code": proc.returncode, "wall": wall, "stage_s": sum(s.get("seconds", 0) for s in stages),
            "sparsity": stages[-1].get("sparsity") if stages else None,
            "metric": (report.get("artifacts") or [{}])[0].get("metric_value"), "name": report.get("metric", {}).get("name")}


def main() -> None:
    cpu = cpu_info()
    lines = [f"# bench/parallel.py ({os.cpu_count()} CPU cores, {cpu.get('cpu', '?')}; one run)", "",
             "| case | processes | wall s | stages s | speed-up (stages) | sparsity | held-out | exit |",
             "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for case, args in CASES.items():
            one = None
            for nproc in (1, 2):
                r = run(args, nproc, Path(tmp) / f"{len(lines)}-{nproc}")
                one = one or r
                speed = one["stage_s"] / r["stage_s"] if r["stage_s"] else float("nan")
                sparsity = f"{r['sparsity']:.3f}" if r["sparsity"] is not None else "-"
                metric = f"{r['name']} {r['metric']:.2f}" if r["metric"] is not None else "-"
                lines.append(f"| {case} | {nproc} | {r['wall']:.0f} | {r['stage_s']:.0f} | {speed:.2f}x | "
                             f"{sparsity} | {metric} | {r['code']} |")
                print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    (ROOT / "bench" / "results" / "parallel.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
