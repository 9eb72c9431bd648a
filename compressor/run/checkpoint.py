"""Per-stage checkpoints in ``--out/.checkpoints`` so that ``--resume`` continues an interrupted run exactly.

After each finished stage we write what rebuilds its result — the weights in their compressed form (with the
structure entries of rpg/basis, so a ring or a basis stack comes back as such), the masks, the stage record — plus
a fingerprint of the input model, the data files and the resolved recipe. Every stage seeds itself from
(seed, stage index), so skipping the finished stages and running the rest gives byte-identical artifacts.
A checkpoint is written to a temporary directory and renamed, so a kill leaves either all of it or none.
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
from compressor.export.rebuild import rebuild_structures
from compressor.io.load import file_sha256, load_state_dict_into
from compressor.io.safetensors_io import read_weights, save_weights
from compressor.stage import config_as_dict

CKPT_DIR = ".checkpoints"


class ResumeError(CompressorError):
    """--resume on a directory whose checkpoints were made from other inputs or settings."""


def fingerprint(options, stages) -> str:
    files = {k: file_sha256(Path(p)) if p and Path(p).is_file() else str(p) for k, p in (
        ("model", options.model), ("heldout", options.data), ("train", options.train_data),
        ("val", options.val_data), ("calib", options.calib_data))}
    doc = {"files": files, "seed": options.seed, "arch": options.arch, "threads": options.threads,
           "stages": [{s.name: config_as_dict(s.config)} for s in stages]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


class Checkpoints:
    def __init__(self, out: Path, fp: str, resume: bool) -> None:
        self.root = out / CKPT_DIR
        self.fp = fp
        if resume:
            marker = self.root / "fingerprint.json"
            if not marker.is_file():
                raise OutputError(f"--resume: {out} holds no checkpoints of an interrupted run")
            saved = json.loads(marker.read_text()).get("fingerprint")
            if saved != fp:
                raise ResumeError(f"--resume: the checkpoints in {out} were made from a different model, data, seed "
                                  "or recipe (fingerprint mismatch); start a new run in an empty --out")

    def _dir(self, index: int, name: str) -> Path:
        return self.root / f"stage-{index:02d}-{name}"

    def finished(self, index: int, name: str) -> bool:
        return (self._dir(index, name) / "record.json").is_file()

    def save(self, index: int, name: str, ctx, record: dict[str, Any]) -> None:
        if not (self.root / "fingerprint.json").is_file():  # created with the first checkpoint, not before
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "fingerprint.json").write_text(json.dumps({"fingerprint": self.fp}))
        final = self._dir(index, name)
        tmp = self.root / f".tmp-{index:02d}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_weights(ctx.model.state_dict(), tmp / "weights.safetensors", {"structures": ctx.structures},
                     encode=False)
        masks = {k: v.to(torch.uint8).contiguous() for k, v in ctx.masks.masks.items()}
        if masks:
            save_file(masks, str(tmp / "masks.safetensors"))
        (tmp / "record.json").write_text(json.dumps({"record": record, "structures": ctx.structures,
                                                      "notes": ctx.notes}, default=str))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)

    def restore(self, index: int, name: str, ctx) -> dict[str, Any]:
        """Rebuild the stage's result into ctx (model, structures, masks, notes); returns its record. The structures' ONNX
        rewrites need no re-registration: the export finds them by kind."""
        d = self._dir(index, name)
        data = json.loads((d / "record.json").read_text())
        state, _ = read_weights(d / "weights.safetensors")
        model = copy.deepcopy(ctx.original)
        for p in model.parameters():
            p.requires_grad_(True)
        model = rebuild_structures(model, data["structures"], state, d / "weights.safetensors")
        load_state_dict_into(model, state, str(d / "weights.safetensors"))
        ctx.model = model.to(ctx.device)
        ctx.structures = list(data["structures"])
        ctx.notes = list(data["notes"])
        ctx.masks.masks.clear()
        if (d / "masks.safetensors").is_file():
            for k, v in load_file(str(d / "masks.safetensors")).items():
                ctx.masks.set(k, v.to(torch.bool))
        return data["record"]

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
