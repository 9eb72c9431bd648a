"""Find a model's weights by the ops that consume them, the same way on eager and `.pt2` models.

A `.pt2` module has no `nn.Linear`/`nn.Conv2d` objects (its layers are graph ops), so we never rely on
`isinstance` alone: we trace (or read) the aten graph and classify each parameter by its consumers, following
view-like ops (a transposed weight read by `mm` is a linear weight). `isinstance` is only the fallback for
models that cannot be traced.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import nn

from compressor.io.data import Dataset
from compressor.runtime.calls import set_train
from compressor.runtime.quiet import quiet_torch

LINEAR_OPS = {"linear", "addmm", "mm", "matmul", "bmm", "baddbmm", "einsum", "_addmm_activation"}
CONV_OPS = {"conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
            "_convolution"}
NORM_OPS = {"batch_norm", "layer_norm", "group_norm", "instance_norm", "native_batch_norm", "native_layer_norm",
            "_native_batch_norm_legit_no_training", "_native_batch_norm_legit", "rms_norm"}
EMBEDDING_OPS = {"embedding", "embedding_bag", "_embedding_bag", "index_select"}
VIEW_OPS = {"t", "transpose", "permute", "view", "reshape", "expand", "_to_copy", "to", "detach", "clone",
            "contiguous", "alias", "type_as", "numpy_T", "_unsafe_view", "unsqueeze", "squeeze"}


@dataclass(frozen=True)
class WeightInfo:
    """One parameter: its name, shape and the kind of op that reads it."""

    name: str
    shape: tuple[int, ...]
    kind: str  # "linear" | "conv" | "norm" | "embedding" | "other"
    aliases: tuple[str, ...] = ()  # other names of the same Parameter (tied weights, e.g. lm_head.weight)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def is_matrix_weight(self) -> bool:
        """A weight of a linear/matmul or convolution op (not a bias, norm, or embedding table)."""
        return self.kind in ("linear", "conv") and len(self.shape) >= 2


def _op_name(target: object) -> str:
    name = getattr(target, "__name__", str(target))
    # "conv2d.default" -> "conv2d"; torch.ops.aten.linear.default -> "linear"
    overload = getattr(target, "_overloadpacket", None)
    if overload is not None:
        name = getattr(overload, "__name__", name)
    return name.split(".")[0]


def _classify_node(node: torch.fx.Node, depth: int = 0) -> set[tuple[str, int]]:
    """(op kind, argument position) for every op that reads this value, following view-like ops."""
    kinds: set[tuple[str, int]] = set()
    for user in node.users:
        if user.op != "call_function":
            continue
        op = _op_name(user.target)
        pos = next((i for i, a in enumerate(user.args) if a is node), -1)
        if op in VIEW_OPS and depth < 4:
            kinds |= _classify_node(user, depth + 1)
        elif op in LINEAR_OPS:
            kinds.add(("linear", pos))
        elif op in CONV_OPS:
            kinds.add(("conv", pos))
        elif op in NORM_OPS:
            kinds.add(("norm", pos))
        elif op in EMBEDDING_OPS:
            kinds.add(("embedding", pos))
        else:
            kinds.add(("other", pos))
    return kinds


def _kind_from_uses(uses: set[tuple[str, int]], shape: tuple[int, ...]) -> str:
    """The weight's kind. A table read by an embedding (gather) op is an embedding even when it is also read by
    a linear op (a tied masked-LM decoder): embeddings are pruned only when asked for by pattern."""
    kinds = {k for k, _ in uses}
    if "embedding" in kinds and len(shape) == 2:
        return "embedding"
    if "conv" in kinds and len(shape) >= 3:
        return "conv"
    if "linear" in kinds and len(shape) >= 2:
        return "linear"
    if "conv" in kinds or "linear" in kinds:
        return "other"  # a bias read by the op
    for k in ("embedding", "norm"):
        if k in kinds:
            return k
    return "other"


def _graph_param_uses(graph: torch.fx.Graph, node_to_param: dict[str, str]) -> dict[str, set[tuple[str, int]]]:
    uses: dict[str, set[tuple[str, int]]] = {}
    for node in graph.nodes:
        pname = None
        if node.op == "get_attr":
            pname = str(node.target)
        elif node.op == "placeholder":
            pname = node_to_param.get(node.name)
        if pname is not None:
            uses.setdefault(pname, set()).update(_classify_node(node))
    return uses


def _uses_by_isinstance(model: nn.Module) -> dict[str, set[tuple[str, int]]]:
    uses: dict[str, set[tuple[str, int]]] = {}
    for mname, mod in model.named_modules():
        cls = getattr(mod, "original_name", type(mod).__name__)
        kind = None
        if cls in ("Linear", "Bilinear", "LazyLinear", "NonDynamicallyQuantizableLinear", "MultiheadAttention"):
            kind = "linear"
        elif cls.startswith("Conv"):
            kind = "conv"
        elif "Norm" in cls:
            kind = "norm"
        elif cls.startswith("Embedding"):
            kind = "embedding"
        if kind is None:
            continue
        for pname, _ in mod.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            uses.setdefault(full, set()).add((kind, 1 if "weight" in pname else 2))
    return uses


def trace_program(model: nn.Module, example: Dataset | None) -> torch.export.ExportedProgram | None:
    """torch.export an eager model on an example batch (None if it cannot be traced)."""
    if example is None or isinstance(model, torch.jit.ScriptModule):
        return None
    was_training = model.training
    try:
        model.eval()
        with quiet_torch():
            return torch.export.export(model, (), kwargs=dict(example.inputs), strict=False)
    except Exception:
        return None
    finally:
        set_train(model, was_training)


def find_weights(model: nn.Module, example: Dataset | None = None,
                 program: torch.export.ExportedProgram | None = None) -> list[WeightInfo]:
    """Every parameter of the model with the kind of op that consumes it."""
    uses: dict[str, set[tuple[str, int]]] | None = None
    if isinstance(model, torch.fx.GraphModule):
        uses = _graph_param_uses(model.graph, {})
    else:
        program = program or trace_program(model, example)
        if program is not None:
            sig = program.graph_signature
            mapping = dict(sig.inputs_to_parameters)
            uses = _graph_param_uses(program.graph, mapping)
    if uses is None:
        uses = _uses_by_isinstance(model)
    # tied weights: one Parameter under several names (a `.pt2` graph reads it through only one of them), so the
    # uses of every name are merged and the Parameter is listed once, under its first name, with its aliases
    groups: dict[int, list[str]] = {}
    params: dict[int, nn.Parameter] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
        params[id(param)] = param
    out = []
    for key, names in groups.items():
        shape = tuple(params[key].shape)
        merged = set().union(*(uses.get(n, set()) for n in names))
        out.append(WeightInfo(names[0], shape, _kind_from_uses(merged, shape), tuple(names[1:])))
    return out


def select(weights: Iterable[WeightInfo], include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[WeightInfo]:
    """Filter by glob patterns on parameter names, aliases of tied weights included (include empty = every
    linear/conv matrix weight: no biases, norms or embedding tables)."""
    def hit(w: WeightInfo, patterns: Sequence[str]) -> bool:
        return any(fnmatch.fnmatchcase(n, p) for n in w.names for p in patterns)

    chosen = []
    for w in weights:
        if include:
            if not hit(w, include):
                continue
        elif not w.is_matrix_weight:
            continue
        if hit(w, exclude):
            continue
        chosen.append(w)
    return chosen


def select_names(weights: Sequence[WeightInfo], include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[str]:
    """Names of the weights a stage works on (`select`): its targets."""
    return [w.name for w in select(weights, include, exclude)]
