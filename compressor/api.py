"""The Python API: `compressor.compress(model, data, pipeline=..., ...)` runs what `compress MODEL --data ...` runs,
from a path or an in-memory `nn.Module`, and from files or in-memory data (arrays, tensors, a mapping of them, an
`(inputs, labels)` pair, or a DataLoader), and returns a `CompressResult` instead of an exit code.

Why files underneath: the run is built on files for its guarantees (inputs hashed into the resume fingerprint, the
source path recorded in model.safetensors so `compressor.load` can rebuild, atomic outputs). An in-memory module is
exported with `torch.export` (batch dimension dynamic) and in-memory data written as `.npz`, both into a temporary
directory that lives for the run; everything else is the CLI's own path (`run/runner.py`). A bad input raises the
`CompressorError` the CLI would print; a failed gate is a result (`passed` False, `exit_code` 3), not an exception.
A model passed in memory is rebuilt from the output with `compressor.load(out, model=<the same architecture>)`.
"""
from __future__ import annotations

import inspect
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from compressor.errors import CompressorError, DataError, UsageError
from compressor.io.data import LABEL_KEY, read_arrays
from compressor.registry import get_stage
from compressor.report.build import print_report, verdict_line
from compressor.run.pipeline import RunOptions
from compressor.run.progress import Reporter
from compressor.run.runner import compress as run_pipeline
from compressor.run.settings import parse_duration
from compressor.stage import build_config

PATHS = (str, Path)


@dataclass(repr=False)
class CompressResult:
    """What a run wrote and measured: `report` is report.json's content."""

    out: Path
    report: dict[str, Any]
    exit_code: int

    def __repr__(self) -> str:
        measured = f", baseline={self.baseline:.4g}, final={self.final:.4g}" if self.report else ""
        return f"CompressResult(out={str(self.out)!r}, exit_code={self.exit_code}{measured})"

    @property
    def passed(self) -> bool:
        return self.exit_code == 0

    @property
    def onnx_path(self) -> Path:
        return self.out / "model.onnx"

    @property
    def safetensors_path(self) -> Path:
        return self.out / "model.safetensors"

    @property
    def baseline(self) -> float:
        """The original's held-out metric."""
        return self.report["baseline"]["value"]

    @property
    def final(self) -> float:
        """model.onnx's held-out metric, as measured in ONNX Runtime."""
        return self.report["artifacts"][0]["metric_value"]


def compress(model: nn.Module | str | Path, data: Any, *, pipeline: str | list[str] = "quantize",
             out: str | Path = "out", train_data: Any = None, val_data: Any = None, calib_data: Any = None,
             stages: Mapping[str, Mapping[str, Any]] | None = None, force: bool = False, quiet: bool = True,
             time_limit: float | str | None = None, **options: Any) -> CompressResult:
    """Compress `model` and verify it on the held-out `data`; see the module docstring for the accepted forms.

    `stages`: options per stage, e.g. `{"prune": {"target": 0.5}}` (as `--set prune.target=0.5`). `options`: any
    other run option by its RunOptions name (seed, device, max_drop, min_recovery, max_bytes, floors, threads,
    metric, confidence, confirm, precision, arch, trust_pickle, resume, keep_checkpoints).
    """
    unknown = set(options) - set(RunOptions.__dataclass_fields__) | set(options) & {
        "model", "data", "pipeline", "out", "overrides", "recipe_options", "train_data", "val_data", "calib_data"}
    if unknown:
        raise UsageError(f"compress(): unknown option(s) {', '.join(sorted(unknown))}")
    if not isinstance(pipeline, (str, list, tuple)):
        raise UsageError(f"compress(): pipeline must be 'a,b' or a list of stage names, not {type(pipeline).__name__}")
    names = [n.strip() for n in (pipeline.split(",") if isinstance(pipeline, str) else pipeline) if n.strip()]
    for stage, opts in (stages or {}).items():
        if stage not in names:
            raise UsageError(f"compress(): options for stage {stage!r}, which is not in the pipeline {names}")
        if not isinstance(opts, Mapping):
            raise UsageError(f"compress(): stages[{stage!r}] must be a mapping of option names to values")
        build_config(get_stage(stage), dict(opts), where=f"compress(): stages[{stage!r}]")
    time_limit = parse_duration(time_limit, "time_limit")
    with tempfile.TemporaryDirectory(prefix="compressor-api-") as tmp:
        tmp = Path(tmp)
        files = {key: as_data_file(value, tmp / f"{key}.npz", key)
                 for key, value in (("data", data), ("train_data", train_data), ("val_data", val_data),
                                    ("calib_data", calib_data)) if value is not None}
        if "data" not in files:
            raise UsageError("compress(): data (the held-out set) is required")
        path = model_file(model, files["data"], tmp / "model.pt2")
        run = RunOptions(model=path, pipeline=names, data=files["data"],
                         out=Path(out), train_data=files.get("train_data"), val_data=files.get("val_data"),
                         calib_data=files.get("calib_data"), force=force, quiet=quiet,
                         recipe_options={k: dict(v) for k, v in (stages or {}).items()}, time_limit=time_limit,
                         **options)
        rng = torch.get_rng_state()  # the run seeds torch's global generator from `seed`; the caller's is restored
        try:
            report, code = run_pipeline(run, Reporter(quiet=quiet))
        except CompressorError as exc:  # in-memory data is named by its argument, not by its temporary file
            message = str(exc)
            for key, file in files.items():
                message = message.replace(str(file), f"{key} (in memory)" if file.parent == tmp else str(file))
            raise type(exc)(message) from None
        finally:
            torch.set_rng_state(rng)
    if not quiet and report is not None:  # what the command line prints: the tables, the decisions, the verdict
        console = Console()
        print_report(report, console)
        console.print(verdict_line(report), highlight=False, markup=False)
    return CompressResult(Path(out), report, code)


def model_file(model: nn.Module | str | Path, data_file: Path, target: Path) -> Path:
    """`model` as a path: a path as given, a module exported (torch.export, dynamic batch) from two held-out rows."""
    if isinstance(model, PATHS):
        return Path(model)
    if not isinstance(model, nn.Module):
        raise UsageError(f"compress(): model must be an nn.Module or a path, not {type(model).__name__}")
    arrays = read_arrays(data_file)  # the loader's own checks and messages (a missing file, a zip bomb, .pt)
    arrays.pop(LABEL_KEY, None)
    names = list(inspect.signature(model.forward).parameters)
    if not (list(arrays) == ["x"] or set(arrays) <= set(names)):
        raise DataError(f"compress(): data arrays {sorted(arrays)} are not the module's forward arguments {names} "
                        f"(a single input may be 'x'; labels go under '{LABEL_KEY}')")
    rows = np.arange(2) % len(next(iter(arrays.values())))  # two rows, even from a one-row set
    example = {k: torch.from_numpy(np.ascontiguousarray(v[rows])) for k, v in arrays.items()}
    example = {k: t.float() if t.is_floating_point() else t for k, t in example.items()}
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()  # exported for inference; the caller's module gets each submodule's mode back
    try:
        if list(example) == ["x"]:
            program = torch.export.export(model, (example["x"],), dynamic_shapes=({0: batch},))
        else:
            program = torch.export.export(model, (), example,
                                          dynamic_shapes={k: {0: batch} for k in example})
    except Exception as exc:  # torch's exporter: many kinds of failure, each a message for the user
        why = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"compress(): torch.export could not export the module ({why}); export it yourself "
                         "and pass the .pt2 path") from exc
    finally:
        for module, training in modes:
            module.training = training
    torch.export.save(program, str(target))
    return target


def as_data_file(value: Any, target: Path, what: str) -> Path:
    """`value` as a data file: a path as given; arrays, tensors, a mapping, an (inputs, labels) pair or an iterable
    of such batches (a DataLoader) written to `target` as .npz (labels under 'y', a single input under 'x')."""
    if isinstance(value, PATHS):
        return Path(value)
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, (np.ndarray, torch.Tensor)) for v in value):
        value = tuple(value)  # [inputs, labels], as a DataLoader's batches come
    arrays = _arrays(value, what)
    np.savez(target, **arrays)
    return target


def _arrays(value: Any, what: str) -> dict[str, np.ndarray]:
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return {"x": _np(value)}
    if isinstance(value, Mapping):
        return {str(k): _np(v) for k, v in value.items()}
    if isinstance(value, tuple) and 1 <= len(value) <= 2 and all(isinstance(v, (np.ndarray, torch.Tensor, Mapping))
                                                                  for v in value):
        inputs = _arrays(value[0], what)
        return {**inputs, **({LABEL_KEY: _np(value[1])} if len(value) == 2 else {})}
    if isinstance(value, Iterable):  # a DataLoader or any iterable of batches
        parts = [_arrays(batch if not isinstance(batch, list) else tuple(batch), what) for batch in value]
        if not parts:
            raise DataError(f"compress(): {what} yielded no batches")
        keys = list(parts[0])
        if any(list(p) != keys for p in parts):
            raise DataError(f"compress(): {what}'s batches do not all hold the same arrays")
        try:
            return {k: np.concatenate([p[k] for p in parts]) for k in keys}
        except ValueError as exc:
            raise DataError(f"compress(): {what}'s batches cannot be joined ({exc})") from exc
    raise UsageError(f"compress(): {what} must be a path, arrays, tensors, a mapping, an (inputs, labels) pair or "
                     f"a DataLoader, not {type(value).__name__}")


def _np(value: Any) -> np.ndarray:
    """An array as the loader reads it: floats as float32 (numpy's default float64 would export a float64 program)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value.astype(np.float32) if value.dtype.kind == "f" and value.dtype != np.float32 else value
    raise UsageError(f"compress(): expected an array or a tensor, not {type(value).__name__}")
