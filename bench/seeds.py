"""Benchmark: do the default pipelines pass the default gate on any seed, with and without --val-data?

Runs `compress` (a subprocess each, one thread, the default gate of 1 point) for seeds 0-4 x {digits_mlp,
digits_cnn, digits_resnet} x {shrink,prune,quantize ; rpg,quantize} x {no --val-data ; --val-data
sample_models/digits_val.npz} and tabulates the held-out drop, the sparsity (prune) or DoF fraction (rpg), the
smallest artifact's bytes and its ratio to the fp32 weights, and the exit code. No decision here uses the
held-out set: it is what the tool reports.

Resumable: each finished row is appended to bench/results/seeds.json and skipped when run again, so it can be
stopped and restarted unattended. Goals (issue 11): every run exits 0 (drop <= 1 point); MLP >= 90% sparsity
and >= 20x; CNN >= 80% and >= 10x.

    python -m bench.seeds [--models digits_mlp,...] [--seeds 0,1] [--pipelines shrink,prune,quantize] [--jobs 2]

A variant of the defaults (`--set prune.max_drop=1 --tag full_share`) is stored apart, in seeds_<tag>.json/.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
RESULTS = ROOT / "bench" / "results"
MODELS = ("digits_mlp", "digits_cnn", "digits_resnet")
PIPELINES = ("shrink,prune,quantize", "rpg,quantize")
SEEDS = (0, 1, 2, 3, 4)
VAL_MODES = ("split", "val")


def key(model: str, pipeline: str, seed: int, val: str) -> str:
    return f"{model}|{pipeline}|{seed}|{val}"


def run_one(model: str, pipeline: str, seed: int, val: str, overrides: tuple[str, ...] = ()) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-seeds-") as tmp:
        out = Path(tmp) / "out"
        cmd = [str(Path(sys.executable).parent / "compress"), str(SAMPLES / f"{model}.pt2"), "--pipeline", pipeline,
               "--data", str(SAMPLES / "digits_heldout.npz"), "--train-data", str(SAMPLES / "digits_train.npz"),
               "--out", str(out), "--seed", str(seed), "--quiet"]
        if val == "val":
            cmd += ["--val-data", str(SAMPLES / "digits_val.npz")]
        applied = [o for o in overrides if o.split(".", 1)[0] in pipeline.split(",")]  # compress refuses others
        for override in applied:
            cmd += ["--set", override]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        row = {"model": model, "pipeline": pipeline, "seed": seed, "val": val, "requested": list(overrides),
               "set": applied, "exit": proc.returncode,
               "seconds": round(time.perf_counter() - start, 1)}
        report_path = out / "report.json"
        if not report_path.is_file():
            row["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
            return row
        report = json.loads(report_path.read_text())
    stages = {s["name"]: s for s in report["stages"]}
    smallest = min(a["size"] for a in report["artifacts"])
    row.update(drop=report["gate"]["drop"], bytes=smallest, ratio=report["baseline"]["bytes"] / smallest,
               sparsity=stages.get("prune", {}).get("sparsity"),
               dof=(stages["rpg"]["dof"] / report["baseline"]["params"]) if "rpg" in stages else None)
    return row


def table(rows: list[dict]) -> str:
    header = ["model", "pipeline", "validation", "seed", "held-out drop", "sparsity / DoF", "smallest bytes",
              "x smaller", "exit"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in sorted(rows, key=lambda r: (MODELS.index(r["model"]), r["pipeline"], r["val"], r["seed"])):
        if "error" in r:
            lines.append(f"| {r['model']} | {r['pipeline']} | {r['val']} | {r['seed']} | error: {r['error']} "
                         f"| - | - | - | {r['exit']} |")
            continue
        frac = (f"{r['sparsity']:.1%} sparse" if r.get("sparsity") is not None
                else f"DoF {r['dof']:.1%}" if r.get("dof") is not None else "-")
        lines.append(f"| {r['model']} | {r['pipeline']} | {r['val']} | {r['seed']} | {r['drop']:.2f} | {frac} | "
                     f"{r['bytes']:,} | {r['ratio']:.1f} | {r['exit']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--pipelines", default=";".join(PIPELINES), help="';'-separated pipelines")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--val", default=",".join(VAL_MODES), help="split (no --val-data), val (--val-data)")
    parser.add_argument("--jobs", type=int, default=1, help="rows run at once (one thread each)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="stage.option=value")
    parser.add_argument("--tag", default="", help="name of a variant's results (required with --set)")
    args = parser.parse_args(argv)
    unknown = [m for m in args.models.split(",") if m not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {unknown}; available: {', '.join(MODELS)}")
    if args.overrides and not args.tag:
        parser.error("--set needs --tag: a variant's rows are stored apart from the defaults'")
    stem = f"seeds_{args.tag}" if args.tag else "seeds"
    store = RESULTS / f"{stem}.json"
    done = json.loads(store.read_text()) if store.is_file() else {}
    todo = [(model, pipeline, seed, val) for model in args.models.split(",") for pipeline in args.pipelines.split(";")
            for val in args.val.split(",") for seed in map(int, args.seeds.split(","))
            if key(model, pipeline, seed, val) not in done]
    stale = sorted({tuple(r.get("requested", ())) for r in done.values()} - {tuple(args.overrides)})
    if stale:  # rows run with other overrides must not be relabelled as this variant's
        parser.error(f"{store.name} holds rows run with --set {stale}: use another --tag or delete it")
    # each row is its own one-thread `compress` process: --jobs of them at once, results stored as they finish
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for row in map(Future.result, as_completed([pool.submit(run_one, *t, tuple(args.overrides)) for t in todo])):
            done[key(row["model"], row["pipeline"], row["seed"], row["val"])] = row
            print(json.dumps(row), flush=True)
            RESULTS.mkdir(exist_ok=True)
            tmp = store.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(done, indent=1, sort_keys=True) + "\n")
            tmp.replace(store)
    text = table(list(done.values()))
    passed = sum(1 for r in done.values() if r.get("exit") == 0)
    variant = (f"Variant {args.tag}: " + " ".join(f"--set {o}" for o in args.overrides)
               + " (each row's `set` in the JSON: the overrides naming a stage of its pipeline). "
               if args.tag else "")
    summary = (f"{variant}{len(done)} runs recorded, {passed} exit 0 (gate: drop <= 1 point). validation: split = a "
               "seeded 10% of digits_train.npz, val = --val-data digits_val.npz. smallest bytes = the smallest "
               "artifact (smallest of raw and gzip); x smaller = fp32 weights / that.")
    title = f"# bench/seeds.py{' --tag ' + args.tag if args.tag else ''}"
    (RESULTS / f"{stem}.md").write_text(f"{title}\n\n{summary}\n\n{text}\n")
    print(text)
    return text


if __name__ == "__main__":
    main()
