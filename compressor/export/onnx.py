"""The ONNX side of structural stages: each structure record's rewrites are found by its kind in the registry.

A stage returns a model and a declarative structure record; here the exported graph is rewritten so that it
holds only the compact form (the ring, the coefficients), the compact tensors are made int8 before ONNX Runtime's
quantizer runs (the working model then holds their dequantized values), and a stage that asks for it gets one
export compared with torch in ONNX Runtime.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from compressor.errors import ArtifactError
from compressor.export.structured_int8 import compact_values
from compressor.export.torch_onnx import export_onnx_proto
from compressor.io.data import Dataset
from compressor.io.onnx_files import save_onnx
from compressor.registry import StructureHandler, structure_handler
from compressor.runtime.calls import max_abs_diff, onnx_predict, ort_session, predict

CHECK_SAMPLES = 256


def handler_of(entry: dict[str, Any]) -> StructureHandler:
    handler = structure_handler(entry.get("kind"))
    if handler is None:
        raise ArtifactError(f"unknown structure {entry.get('kind')!r}; is a plugin missing?")
    return handler


def apply_rewrites(proto: onnx.ModelProto, structures: list[dict[str, Any]], model: nn.Module) -> onnx.ModelProto:
    """The fp32 graph with every structure's ONNX rewrite applied, in the order the stages ran."""
    for entry in structures:
        rewrite = handler_of(entry).onnx_rewrite
        if rewrite is not None:
            proto = rewrite(proto, entry, model)
    return proto


def compact_int8(proto: onnx.ModelProto | Path, structures: list[dict[str, Any]],
                 model: nn.Module) -> onnx.ModelProto | None:
    """The graph (a proto, or the file it is read from only if needed) with the structures' own compact tensors
    stored as int8, or None when no structure has any. The working model takes the values that graph computes for
    them (`adopt_compact_values`)."""
    rewrites = [(entry, handler_of(entry).int8_rewrite) for entry in structures]
    rewrites = [(entry, fn) for entry, fn in rewrites if fn is not None]
    if not rewrites:
        return None
    if isinstance(proto, Path):
        proto = onnx.load(str(proto))
    for entry, rewrite in rewrites:
        proto = rewrite(proto, entry, model)
    adopt_compact_values(proto, structures, model)
    return proto


def adopt_compact_values(proto: onnx.ModelProto, structures: list[dict[str, Any]], model: nn.Module) -> None:
    """Copy into `model` the float32 values the int8 graph computes for the structures' compact tensors (the
    dequantized ring, the coefficients), as the run does for ONNX Runtime's int8 weights after quantize: so
    `model.safetensors` holds exactly the graph's weights, int8 or not. A record pinning the checksum of the
    model's regenerated weights (rpg's ``checksum``, checked by `compressor.load`) is re-pinned to the new ones."""
    pinned = [entry for entry in structures if "checksum" in entry]
    checksum = getattr(model, "checksum", None) if pinned else None
    before = checksum() if callable(checksum) else None
    state = model.state_dict()
    values = compact_values(proto, state)
    if not values:
        return
    with torch.no_grad():
        for name, value in values.items():
            state[name].copy_(value)
    if before is not None:
        after = checksum()
        for entry in pinned:
            if entry["checksum"] == before:
                entry["checksum"] = after


def export_model(model: nn.Module, example: Dataset, device: str, structures: list[dict[str, Any]]) -> onnx.ModelProto:
    return apply_rewrites(export_onnx_proto(model, example, device), structures, model)


def verify_structure(model: nn.Module, entry: dict[str, Any], data: Dataset, device: torch.device) -> dict[str, float]:
    """Export with this structure's rewrite, run in ONNX Runtime on up to 256 samples: max abs diff vs torch and
    the file's bytes."""
    data = data.subset(torch.arange(min(CHECK_SAMPLES, len(data))))
    proto = export_model(model, data.example(), str(device), [entry])
    with tempfile.TemporaryDirectory(prefix=f"compressor-{entry['kind']}-") as tmp:
        path = Path(tmp) / "check.onnx"
        save_onnx(proto, path)
        diff = max_abs_diff(onnx_predict(ort_session(path), data), predict(model, data, device))
        return {"onnx_max_abs_diff": diff, "onnx_fp32_bytes": path.stat().st_size}
