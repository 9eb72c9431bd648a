"""Per-stage checkpoints in ``--out/.checkpoints`` so that ``--resume`` continues an interrupted run exactly.

After each finished stage we write what rebuilds its result — the weights in their compressed form (with the
structure entries of rpg/basis, so a ring or a basis stack comes back as such), the masks, the stage record — plus
a fingerprint of the input model, the data files and the resolved recipe. Every stage seeds itself from
(seed, stage index), so skipping the finished stages and running the rest gives byte-identical artifacts.
A checkpoint is written to a temporary directory and renamed, so a kill leaves either all of it or none; a write
that fails (a full disk) removes the temporary directory and names the file; the temporary directories of a
crashed run are removed by the next one. Unreadable checkpoint files are errors naming the file.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from compressor.errors import CompressorError, OutputError
from compressor.io.arch import arch_source
from compressor.io.hf.files import is_hf_dir
from compressor.io.image_data import read_folder
from compressor.io.load import file_sha256, load_state_dict_into, source_sha256
from compressor.io.reload import rebuild_structures
from compressor.io.safetensors_io import read_weights, save_weights
from compressor.run.outputs import CKPT_DIR, remove_dead_debris
from compressor.runtime.parallel import world
from compressor.schema import config_as_dict


class ResumeError(CompressorError):
    """--resume on a directory whose checkpoints were made from other inputs or settings, or are unreadable."""


def _unreadable(path: Path, why: str) -> ResumeError:
    return ResumeError(f"--resume: {path}: unreadable checkpoint ({why}); rerun without --resume in an empty --out")


def read_json(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """A checkpoint JSON file that must be an object holding `keys`."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise _unreadable(path, f"{type(exc).__name__}: {str(exc)[:120]}") from exc
    if not isinstance(data, dict) or any(k not in data for k in keys):
        raise _unreadable(path, f"expected an object with {', '.join(keys)}")
    return data


def input_sha256(path: Path) -> str:
    """A model or data file's sha256 (a Hugging Face directory's over its model files); an image folder's over
    the names and sha256s of its images, in the order they are read."""
    if not path.is_dir() or is_hf_dir(path):
        return source_sha256(path)
    folder = read_folder(path)
    return hashlib.sha256("".join(f"{rel.as_posix()}\0{file_sha256(path / rel)}\0"
                                  for rel in folder.files).encode()).hexdigest()


def fingerprint(options, stages) -> str:
    files = {k: input_sha256(Path(p)) if p and Path(p).exists() else str(p) for k, p in (
        ("model", options.model), ("heldout", options.data), ("train", options.train_data),
        ("val", options.val_data), ("calib", options.calib_data))}
    doc = {"files": files, "seed": options.seed, "arch": options.arch, "threads": options.threads,
           "max_drop": options.max_drop, "confidence": options.confidence, "confirm": options.confirm,
           "metric": None if options.metric in (None, "auto") else options.metric,  # both mean: detected
           "world_size": world()[1], "time_limit": options.time_limit,  # data-parallel ranks split every batch: another count, other numbers
           "stages": [{s.name: config_as_dict(s.config)} for s in stages]}
    source = arch_source(options.arch)
    if source is not None:  # the architecture's code itself: an edited forward makes other numbers
        doc["arch_sha256"] = file_sha256(source)
    if options.task is not None:  # another transformers class and output (None keeps earlier checkpoints valid)
        doc["task"] = options.task
    if options.precision != "fp32":  # other arithmetic, other numbers (fp32 keeps earlier checkpoints valid)
        doc["precision"] = options.precision
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


class Checkpoints:
    def __init__(self, out: Path, fp: str, resume: bool) -> None:
        self.root = out / CKPT_DIR
        self.fp = fp
        if self.root.is_dir():
            remove_dead_debris(self.root, ".tmp-*")
        if resume:
            marker = self.root / "fingerprint.json"
            if not marker.is_file():
                raise OutputError(f"--resume: {out} holds no checkpoints of an interrupted run")
            saved = read_json(marker, ("fingerprint",))["fingerprint"]
            if saved != fp:
                raise ResumeError(f"--resume: the checkpoints in {out} were made from a different model, data, seed, "
                                  "recipe, --confidence, --confirm, --nproc or --time-limit (fingerprint mismatch); "
                                  "start a new run in an empty --out")

    def _dir(self, index: int, name: str) -> Path:
        return self.root / f"stage-{index:02d}-{name}"

    def finished(self, index: int, name: str) -> bool:
        return (self._dir(index, name) / "record.json").is_file()

    def save(self, index: int, name: str, ctx, record: dict[str, Any]) -> None:
        tmp = self.root / f".tmp-{index:02d}-{os.getpid()}"
        current = tmp
        try:
            if not (self.root / "fingerprint.json").is_file():  # created with the first checkpoint, not before
                self.root.mkdir(parents=True, exist_ok=True)
                current = self.root / f".tmp-fingerprint-{os.getpid()}"
                current.write_text(json.dumps({"fingerprint": self.fp}))
                os.replace(current, self.root / "fingerprint.json")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            current = tmp / "weights.safetensors"
            save_weights(ctx.model.state_dict(), current, {"structures": ctx.structures}, encode=False)
            masks = {k: v.to(torch.uint8).contiguous() for k, v in ctx.masks.masks.items()}
            if masks:
                current = tmp / "masks.safetensors"
                save_file(masks, str(current))
            current = tmp / "record.json"
            current.write_text(json.dumps({"record": record, "structures": ctx.structures, "notes": ctx.notes},
                                          default=str))
            current = self._dir(index, name)
            shutil.rmtree(current, ignore_errors=True)
            os.replace(tmp, current)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if current.name.startswith(".tmp-fingerprint"):
                current.unlink(missing_ok=True)
            if isinstance(exc, Exception):
                why = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[0][:160]
                shown = self._dir(index, name) / current.name if current.parent == tmp else current
                raise OutputError(f"{shown}: cannot write the checkpoint ({why})") from exc
            raise

    def restore(self, index: int, name: str, ctx) -> dict[str, Any]:
        """Rebuild the stage's result into ctx (model, structures, masks, notes); returns its record. The structures' ONNX
        rewrites need no re-registration: the export finds them by kind."""
        d = self._dir(index, name)
        data = read_json(d / "record.json", ("record", "structures", "notes"))
        if not (isinstance(data["structures"], list) and isinstance(data["notes"], list)
                and isinstance(data["record"], dict)):
            raise _unreadable(d / "record.json", "malformed record, structures or notes")
        state, _ = read_weights(d / "weights.safetensors")
        model = copy.deepcopy(ctx.original)
        for p in model.parameters():
            p.requires_grad_(True)
        try:
            model = rebuild_structures(model, data["structures"], state, d / "weights.safetensors")
            load_state_dict_into(model, state, str(d / "weights.safetensors"))
        except Exception as exc:
            raise _unreadable(d / "weights.safetensors", str(exc).strip()[:200]) from exc
        ctx.model = model.to(ctx.device)
        ctx.structures = list(data["structures"])
        ctx.notes = list(data["notes"])
        record = data["record"]  # a checkpoint written before records had decisions: its first note says it
        record.setdefault("decision", record["notes"][0] if record.get("notes") else None)
        ctx.masks.masks.clear()
        if (d / "masks.safetensors").is_file():
            for k, v in load_file(str(d / "masks.safetensors")).items():
                ctx.masks.set(k, v.to(torch.bool))
        return data["record"]

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
