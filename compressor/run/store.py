"""The run's store phase: model.safetensors written with the run's metadata (source, stages, structures), its
quantized weights stored exactly as model.onnx holds them; for a Hugging Face model, its config and tokenizer files
beside them (what ONNX Runtime or optimum need to run model.onnx on text)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import torch

from compressor.export.float_weights import describe_float, stay_float_reasons
from compressor.export.int8_weights import match_int8
from compressor.io.hf.files import copy_side_files
from compressor.io.onnx_files import run_time_quantized
from compressor.io.reload import source_record
from compressor.io.safetensors_io import save_weights
from compressor.run.pipeline import RunContext, RunOptions
from compressor.runtime.memory import release_memory
from compressor.schema import config_as_dict
from compressor.stage import Stage
from compressor.version import __version__


def store_weights(ctx: RunContext, options: RunOptions, stages: list[Stage], st_path: Path, onnx_path: Path,
                  onnx_sha256: str, quantized: bool) -> tuple[dict[str, Any], bool, bool]:
    """Write model.safetensors; returns (its encodings by tensor, whether the torch model took stored int8 weights,
    so its outputs changed, whether model.onnx quantizes activations at run time)."""
    ctx.reporter.log("writing and verifying model.safetensors")
    if ctx.loaded.hf is not None:
        write_hf_files(ctx, st_path.parent)
    meta = {"source": source_record(ctx.loaded), "compressor_version": __version__, "seed": options.seed,
            "stages": [{"name": s.name, "config": config_as_dict(s.config)} for s in stages],
            "structures": ctx.structures}
    state = ctx.model.state_dict()
    graph = onnx.load(str(onnx_path)) if quantized else None  # read once: its int8 weights and its ops
    int8 = match_int8(graph, state) if graph is not None else None
    dynamic = graph is not None and run_time_quantized(graph.graph)
    floats = ([w.name for w in ctx.weights if w.name in state and w.name not in int8] if int8 else [])
    reasons = stay_float_reasons(graph, state, floats) if floats else {}
    del graph
    release_memory()  # the graph's protobuf copy of model.onnx, before the safetensors copy of the weights
    encodings = save_weights(state, st_path, meta, onnx_sha256=onnx_sha256, int8=int8)
    if int8:
        take_stored_int8(ctx, state, int8, encodings, reasons)
    return encodings, bool(int8), dynamic


def take_stored_int8(ctx: RunContext, state: dict[str, torch.Tensor], int8: dict, encodings: dict,
                     floats: dict[str, str]) -> None:
    """The torch model takes the stored int8 weights, so the reload check after stays exact; a note says which
    weights are not int8 in model.onnx and why (`floats`: name -> the graph's reason)."""
    with torch.no_grad():
        for name, weight in int8.items():
            if encodings.get(name, {}).get("encoding") == "int8":  # a tied alias keeps its stored twin's values
                state[name].copy_(weight.dequantize())
    stored = {n: w for n, w in int8.items() if encodings.get(n, {}).get("encoding") == "int8"}
    other = {}  # weights model.onnx holds as int8 that safetensors stores another way (a prune codebook, an alias)
    for name in int8.keys() - stored.keys():
        encoding = encodings.get(name, {}).get("encoding", "float")
        other.setdefault(encoding, []).append(name)
    four = sum(1 for w in stored.values() if w.bits == 4)
    parts = [f"{len(stored)} weights stored as model.onnx holds them ("
             + (f"{four} 4-bit block-wise, {len(stored) - four} int8; " if four else "int8; ") + "dequantized on load)"
             ] if stored else []
    parts += [f"{len(names)} int8 in model.onnx stored as {encoding} here (values within one int8 step of the "
              f"graph's): {', '.join(sorted(names)[:3])}" for encoding, names in sorted(other.items())]
    parts += [f"{len(floats)} not int8 in model.onnx: {describe_float(floats)}"] if floats else []
    ctx.notes.append("model.safetensors: " + "; ".join(parts))


def write_hf_files(ctx: RunContext, staging: Path) -> None:
    """config.json and the tokenizer or image-processor files copied into the output, and a note naming model.onnx's
    inputs and output (compressor.load rebuilds the module from this config.json too)."""
    hf = ctx.loaded.hf
    copied = copy_side_files(hf.layout, staging)
    inputs = ", ".join(hf.input_names)
    text = hf.encoder.reads == "text"
    kind = (f"int64 [batch, sequence], texts truncated at {hf.encoder.max_length} tokens" if text
            else "float32 [batch, channels, height, width]")
    ctx.notes.append(f"Hugging Face {hf.task}: model.onnx takes {inputs} ({kind}) and returns "
                     f"{hf.module.onnx_output_names[0]}; {', '.join(copied)} copied beside it from {hf.layout.root}")
