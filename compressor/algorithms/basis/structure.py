"""The basis structure record: rebuild the stacks on load, and their ONNX / int8 rewrites, registered by kind."""
from __future__ import annotations

import torch
from torch import nn

from compressor.algorithms.basis.functions import Basis
from compressor.algorithms.basis.onnx_graph import make_int8_rewrite, make_onnx_rewrite
from compressor.algorithms.basis.stack import block_layout
from compressor.algorithms.basis.hierarchy import hierarchical_model
from compressor.algorithms.basis.stage import install_stack
from compressor.errors import ArtifactError
from compressor.registry import StructureHandler, register_structure


def rebuild(model: nn.Module, entry: dict, state: dict) -> nn.Module:
    """`compressor.load` and `--resume`: the compressed form on a fresh source-architecture model."""
    if entry.get("unflattened") or isinstance(model, torch.fx.GraphModule):
        dtypes = {"float32": torch.float32, "int64": torch.int64, "int32": torch.int32, "float64": torch.float64}
        args = tuple(torch.zeros(e["shape"], dtype=dtypes.get(e["dtype"], torch.float32))
                     for e in entry.get("example", []))
        if entry.get("keywords"):  # a program exported with keyword inputs (absent in older records: positional)
            model = hierarchical_model(model, (), None, dict(zip(entry.get("input_names", []), args)))
        else:
            model = hierarchical_model(model, args, entry.get("input_names"))
    for rec in entry.get("stacks", []):
        container = model.get_submodule(rec["parent"]) if rec["parent"] else model
        missing = [b for b in rec["blocks"] if b not in container._modules]
        if missing:
            raise ArtifactError(f"basis: the architecture has no block {rec['parent']}.{missing[0]}")
        layout, _ = block_layout(container._modules[rec["blocks"][0]])
        if [[n, list(s), k] for n, s, k in layout] != rec["layout"]:
            raise ArtifactError(f"basis: the blocks of {rec['path']} do not match the saved stack's tensors")
        hidden = rec.get("hidden_arg", 0)  # absent in records written before it was saved: the first argument
        if not isinstance(hidden, int) or hidden < 0:
            raise ArtifactError(f"basis: the saved stack {rec['path']} has hidden-state argument {hidden!r}")
        install_stack(model, rec["parent"], rec["blocks"], Basis(rec["basis"], rec["K"]), rec["n_steps"], None,
                      hidden)
    return model


def stack_modules(entry: dict, model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, BasisStack) of every stack the record names, in the working model."""
    return [(rec["path"], model.get_submodule(rec["path"])) for rec in entry.get("stacks", [])]


def onnx_rewrite(proto, entry: dict, model: nn.Module):
    """Keep only the coefficients; each step's weights are formed in-graph."""
    return make_onnx_rewrite(stack_modules(entry, model))(proto)


def int8_rewrite(proto, entry: dict, model: nn.Module):
    return make_int8_rewrite(stack_modules(entry, model))(proto)


HANDLER = register_structure(StructureHandler("basis", rebuild, onnx_rewrite, int8_rewrite))
