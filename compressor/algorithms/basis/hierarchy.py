"""Give a model the module hierarchy stack detection needs, and an example input to trace it with.

A `.pt2` program loads as a flat GraphModule (`ep.module()`): its layers are not submodules. It is re-exported
with a dynamic batch (by keyword when the program takes its inputs by keyword, e.g. a text model's `input_ids` and
`attention_mask`) and restored with `torch.export.unflatten`, whose layers then receive their arguments in the
program's order (the attention mask may come before the hidden state: `compressor.algorithms.basis.stacks` finds
which argument is chained). Queiruga et al., docs/ALGORITHMS.md §4.
"""
from __future__ import annotations

import inspect
import warnings
from typing import Any

import torch
from torch import nn

from compressor.runtime.calls import takes_keywords


def hierarchical_model(model: nn.Module, example_args: tuple, input_names: list[str] | None = None,
                       example_kwargs: dict | None = None) -> nn.Module:
    """A module whose submodules are the blocks: the model itself, or, for a flat `.pt2` GraphModule
    (`ep.module()`), the model re-exported with a dynamic batch and unflattened (holding its current tensors).
    A program exported with keyword inputs (e.g. `input_ids=..., attention_mask=...`) is re-exported the same way.

    The unflattened module's forward takes `*args`, which the ONNX exporter cannot pair with per-input dynamic
    shapes, so it is given a forward with the program's named inputs (`named_forward`)."""
    if not isinstance(model, torch.fx.GraphModule):
        return model

    def dim(a: Any) -> dict | None:
        return {0: torch.export.Dim.DYNAMIC} if isinstance(a, torch.Tensor) and a.ndim else None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if example_kwargs:
            program = torch.export.export(model, (), kwargs=dict(example_kwargs), strict=False,
                                          dynamic_shapes={k: dim(v) for k, v in example_kwargs.items()})
        else:
            program = torch.export.export(model, tuple(example_args), strict=False,
                                          dynamic_shapes=tuple(dim(a) for a in example_args))
        module = torch.export.unflatten(program)
    module.load_state_dict(model.state_dict(), strict=True)
    if example_kwargs:
        return named_forward(module, list(example_kwargs), keywords=True)
    names = list(input_names or [f"arg{i}" for i in range(len(example_args))])
    return named_forward(module, names)


_NAMED_CLASSES: dict[tuple[type, tuple[str, ...], bool], type] = {}


def named_forward(module: nn.Module, names: list[str], keywords: bool = False) -> nn.Module:
    """Give a module whose forward is `(*args, **kwargs)` a forward with explicit positional names (passed on by
    keyword when the program was exported with keyword inputs)."""
    if not all(n.isidentifier() for n in names):
        if keywords:
            raise ValueError(f"input names {names} are not identifiers")
        names = [f"arg{i}" for i in range(len(names))]
    base = type(module)
    key = (base, tuple(names), keywords)
    if key not in _NAMED_CLASSES:
        args = ", ".join(names)
        call = ", ".join(f"{n}={n}" for n in names) if keywords else args
        ns: dict[str, Any] = {}
        exec(f"def forward(self, {args}):\n    return _base_forward(self, {call})\n", {"_base_forward": base.forward}, ns)
        _NAMED_CLASSES[key] = type(base.__name__, (base,), {"forward": ns["forward"], "__module__": base.__module__})
    module.__class__ = _NAMED_CLASSES[key]
    return module


def example_inputs(model: nn.Module, data: Any, program: torch.export.ExportedProgram | None
                   ) -> tuple[tuple, dict] | None:
    """(args, kwargs) for one traced forward: two samples of a dataset (by keyword when the model's forward
    names them, as `compressor.judge.metrics.call_model` does), else the `.pt2` program's example inputs."""
    if data is not None:
        inputs = {k: v[:2] for k, v in data.example().inputs.items()}
        if isinstance(model, torch.fx.GraphModule) and takes_keywords(model, list(inputs)):
            return (), inputs  # a program exported with keyword inputs
        if list(inputs) == ["x"] or isinstance(model, torch.fx.GraphModule) or program is not None:
            return tuple(inputs.values()), {}
        try:
            params = inspect.signature(model.forward).parameters
            if all(k in params for k in inputs):
                return (), inputs
        except (TypeError, ValueError):
            pass
        return tuple(inputs.values()), {}
    if program is not None and program.example_inputs is not None:
        a, kw = program.example_inputs
        return tuple(a), dict(kw or {})
    return None
