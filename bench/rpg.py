"""Benchmark: rpg (Wang et al., WACV 2023) ring form vs the dense model, sweeping the ring size.

For digits_cnn and digits_resnet (state_dict + --arch, so batch norm trains while fine-tuning), each ring fraction
(N = 0.05, 0.10, 0.16, 0.25, 0.50 of the generated weights) is run through the real CLI pipeline (`compress ...
--pipeline rpg`, the stage's default fine-tuning) and reports held-out accuracy after the projection only (same seed, so
the same ring before fine-tuning) and after fine-tuning, DoF, ONNX and safetensors bytes measured from the files,
the size bound 1.1*4*DoF + 16 KB, and ONNX Runtime vs torch; plus `rpg,quantize` with the stage's defaults
(int8 ring, one scale per 128-slot row) under the default 1-point gate, so its ring grows while the validation bound
is over budget (the fraction rows are fixed sizes: rpg.grow=false, no gate).

    python -m bench.rpg            (writes bench/results/rpg.md too; ~15-30 min on 2 shared cores)
    python -m bench.rpg --epochs 5 (a shorter budget, stated in the table header)
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from compressor.algorithms.rpg.stage import RpgConfig, RpgStage
from compressor.export.torch_onnx import export_onnx_proto
from compressor.io.onnx_files import save_onnx
from compressor.judge.metrics import evaluate
from compressor.run.pipeline import RunOptions
from compressor.run.prepare import prepare
from compressor.run.progress import Reporter
from compressor.run.runner import compress

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
MODELS = {"digits_cnn": "sample_models.digits_models:cnn", "digits_resnet": "sample_models.digits_models:resnet"}
FRACTIONS = (0.05, 0.10, 0.16, 0.25, 0.50)
HEADER = ["model", "variant", "DoF", "DoF %", "ring N", "reuse T/N", "held-out proj. only %", "held-out %",
          "x dense acc", "ONNX bytes", "bound bytes", "safetensors bytes", "ORT vs torch", "seconds"]


def options(name: str, out: Path, pipeline: list[str], overrides: list[str], max_drop: float = 100.0) -> RunOptions:
    """The sweep measures fixed ring sizes (no gate: --max-drop 100, rpg.grow=false); the defaults row runs the
    default gate (1 point), so the stage grows its ring while the validation bound is over budget."""
    return RunOptions(model=SAMPLES / f"{name}.pt", arch=MODELS[name], pipeline=pipeline, out=out, force=True,
                      data=SAMPLES / "digits_heldout.npz", train_data=SAMPLES / "digits_train.npz",
                      overrides=overrides, quiet=True, max_drop=max_drop)


def projection_only(name: str, ring_size: int, tmp: Path) -> float:
    """Held-out accuracy of the projected ring of the run's final size before any fine-tuning (same seed and stage
    index as the run)."""
    ctx, held, _, _, _ = prepare(options(name, tmp / "unused", ["rpg"], []), Reporter(quiet=True))
    result = RpgStage(RpgConfig(ring_size=ring_size, epochs=0, verify_onnx=False, grow=False)).apply(ctx)
    return evaluate(result.model, held, None).value


def dense_row(name: str, tmp: Path) -> tuple[list[str], float]:
    ctx, held, baseline, _, _ = prepare(options(name, tmp / "unused", ["rpg"], []), Reporter(quiet=True))
    onnx_path, st_path = tmp / f"{name}-dense.onnx", tmp / f"{name}-dense.safetensors"
    save_onnx(export_onnx_proto(ctx.original, held.example()), onnx_path)
    save_file({k: v.contiguous() for k, v in ctx.original.state_dict().items()}, str(st_path))
    params = sum(p.numel() for p in ctx.original.parameters())
    row = [name, "dense baseline", f"{params:,}", "100.0", "-", "-", "-", f"{baseline.value:.2f}", "1.000",
           f"{onnx_path.stat().st_size:,}", "-", f"{st_path.stat().st_size:,}", "-", "-"]
    return row, baseline.value


def rpg_row(name: str, fraction: float | None, dense_acc: float, tmp: Path, epochs: int | None,
            quantize: bool) -> list[str]:
    overrides = ([f"rpg.ring_fraction={fraction}", "rpg.grow=false"] if fraction is not None else []) + \
        ([f"rpg.epochs={epochs}"] if epochs is not None else [])
    pipeline = ["rpg", "quantize"] if quantize else ["rpg"]
    out = tmp / f"{name}-{fraction}-{'q' if quantize else 'f'}"
    t0 = time.perf_counter()
    report, _ = compress(options(name, out, pipeline, overrides, 100.0 if fraction is not None else 1.0))
    seconds = time.perf_counter() - t0
    stage = report["stages"][0]
    onnx_art, st_art = report["artifacts"]
    proj = projection_only(name, stage["ring_size"], tmp)
    acc = onnx_art["metric_value"]
    bound = 1.1 * 4 * stage["dof"] + 16 * 1024
    variant = (f"rpg ring {fraction:.2f}" if fraction is not None else
               f"rpg defaults, default gate (ring grown {len(stage['ring_sizes_tried']) - 1}x)") + \
        (" + quantize (int8 ring)" if quantize else "")
    return [name, variant, f"{stage['dof']:,}", f"{100 * stage['dof_fraction']:.1f}", f"{stage['ring_size']:,}",
            f"{stage['ring_reuse']:.1f}", f"{proj:.2f}", f"{acc:.2f}", f"{acc / dense_acc:.3f}",
            f"{onnx_art['bytes']:,}", f"{int(bound):,}", f"{st_art['bytes']:,}",
            f"{onnx_art['parity_max_abs_diff_fp32_vs_torch']:.1e}", f"{seconds:.0f}"]


def table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def write(rows: list[list[str]], epochs: int | None, done: bool) -> str:
    budget = f"{epochs} fine-tuning epochs (reduced from the default)" if epochs is not None else \
        "the stage's default fine-tuning"
    text = (f"# bench/rpg.py (2 shared CPU cores, torch {torch.__version__}){'' if done else ' — partial'}\n\n"
            f"State_dict + --arch models (batch norm trains while fine-tuning), seed 0, {budget}. Held-out accuracy "
            "of the ONNX artifact in ONNX Runtime; 'proj. only' = the closed-form ring before fine-tuning (torch). "
            "'x dense acc' = held-out accuracy / the dense model's. ONNX bytes of the fp32 ring-only graph (int8 ring "
            "for '+ quantize'); bound = 1.1 x 4 x DoF + 16 KB. 'ORT vs torch' = max abs diff of the fp32 graph's "
            "outputs on the held-out set.\n\n" + table(rows) + "\n")
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "rpg.md").write_text(text)
    return text


def main() -> str:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default: the stage's 20)")
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-rpg-") as tmp:
        tmp = Path(tmp)
        for name in args.models.split(","):
            row, dense_acc = dense_row(name, tmp)
            rows.append(row)
            print(table(rows[-1:]).splitlines()[-1], flush=True)
            for fraction in FRACTIONS:
                rows.append(rpg_row(name, fraction, dense_acc, tmp, args.epochs, quantize=False))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
                write(rows, args.epochs, done=False)
            rows.append(rpg_row(name, None, dense_acc, tmp, args.epochs, quantize=True))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = write(rows, args.epochs, done=True)
    print(text)
    return text


if __name__ == "__main__":
    main()
