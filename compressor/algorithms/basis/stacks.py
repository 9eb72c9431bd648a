"""Find stacks: consecutive blocks with the same tensors and the same computation, applied one after another.

A stack of D same-shaped residual blocks is a depth-wise weight function in the piecewise-constant basis
(Queiruga et al., docs/ALGORITHMS.md §4). Detection works the same on eager modules and on `.pt2` programs whose
hierarchy is restored with `torch.export.unflatten` (a flat `ep.module()` is re-exported and unflattened first).

Criteria, all checked on one traced forward with an example input:
1. same parameter/buffer names, shapes and dtypes (the signature), under the same parent module;
2. applied one after another: each block is called exactly once, one positional argument of block k+1 IS block
   k's output (the same tensor object, so the chain is verified, not inferred from names) — the hidden-state
   argument, found per stack and the same index for every block (an unflattened `.pt2` layer may receive the
   attention mask or symbolic sizes first) — its other arguments are the same objects as block k's, and a
   block's output has its input hidden state's shape;
3. the same computation: running the first block with block k's tensors (`torch.func.functional_call`) on
   block k's recorded input reproduces block k's output.
Without an example input only `nn.Sequential` runs of the same class and repr are reported, as unverified.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

FUNC_ATOL = 1e-5


@dataclass
class Stack:
    """A run of blocks `parent.blocks[i]` (child names, in call order)."""

    parent: str
    blocks: list[str]
    params_per_block: int
    buffers_per_block: int
    verified: bool = True
    hidden_arg: int = 0  # index of the positional argument that chains block k's output into block k+1
    notes: list[str] = field(default_factory=list)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def paths(self) -> list[str]:
        return [f"{self.parent}.{b}" if self.parent else b for b in self.blocks]

    @property
    def name(self) -> str:
        first, last = self.paths[0], self.blocks[-1]
        return f"{first}..{last}" if self.depth > 1 else first

    def as_dict(self) -> dict[str, Any]:
        return {"parent": self.parent, "blocks": list(self.blocks), "depth": self.depth,
                "params_per_block": self.params_per_block, "buffers_per_block": self.buffers_per_block,
                "verified": self.verified, "hidden_arg": self.hidden_arg}


def signature(module: nn.Module) -> tuple:
    items = [(n, tuple(p.shape), p.dtype, "p") for n, p in module.named_parameters()]
    items += [(n, tuple(b.shape), b.dtype, "b") for n, b in module.named_buffers()]
    return tuple(items)


def _counts(module: nn.Module) -> tuple[int, int]:
    return (sum(p.numel() for p in module.parameters()), sum(b.numel() for b in module.buffers()))


def _first(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def _same_object_or_value(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_object_or_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_object_or_value(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except Exception:
        return False


def _candidates(model: nn.Module) -> dict[str, list[str]]:
    """parent path -> child names that share their signature with a sibling and hold tensors."""
    out: dict[str, list[str]] = {}
    for pname, parent in model.named_modules():
        children = [(n, c) for n, c in parent.named_children()]
        sigs: dict[tuple, list[str]] = {}
        for n, c in children:
            sig = signature(c)
            if sig:
                sigs.setdefault(sig, []).append(n)
        names = [n for group in sigs.values() if len(group) > 1 for n in group]
        if names:
            out[pname] = names
    return out


def _child(model: nn.Module, parent: str, name: str) -> nn.Module:
    return model.get_submodule(f"{parent}.{name}" if parent else name)


@torch.no_grad()
def detect_stacks(model: nn.Module, args: tuple | None = None, kwargs: dict | None = None,
                  min_depth: int = 2) -> list[Stack]:
    """Stacks in `model` (eager or unflattened); `args`/`kwargs`: an example input for the traced forward."""
    cands = _candidates(model)
    if not cands:
        return []
    if args is None and not kwargs:
        return _static_stacks(model, cands, min_depth)
    calls: list[dict[str, Any]] = []
    handles = []
    for parent, names in cands.items():
        for name in names:
            mod = _child(model, parent, name)

            def pre(m, a, kw, parent=parent, name=name):
                calls.append({"parent": parent, "name": name, "args": a, "kwargs": kw, "out": None})

            def post(m, a, kw, out, parent=parent, name=name):
                for c in reversed(calls):
                    if c["parent"] == parent and c["name"] == name and c["out"] is None:
                        c["out"] = out
                        break

            handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(mod.register_forward_hook(post, with_kwargs=True))
    try:
        try:
            was = model.training
            model.eval()
        except NotImplementedError:
            was = False
        model(*(args or ()), **(kwargs or {}))
    finally:
        for h in handles:
            h.remove()
        if was:
            model.train(True)
    stacks: list[Stack] = []
    for parent, names in cands.items():
        seq = [c for c in calls if c["parent"] == parent]
        counts: dict[str, int] = {}
        for c in seq:
            counts[c["name"]] = counts.get(c["name"], 0) + 1
        run: list[dict[str, Any]] = []
        hidden: int | None = None
        for c in seq + [None]:
            link = _linked(model, parent, run[-1], c, counts) if c is not None and run else None
            if link is not None and (hidden is None or link == hidden) and _same_computation(
                    model, parent, run[0], c):
                run.append(c)
                hidden = link
                continue
            if len(run) >= min_depth:
                first = _child(model, parent, run[0]["name"])
                stacks.append(Stack(parent, [r["name"] for r in run], *_counts(first), hidden_arg=hidden or 0))
            run = [c] if c is not None and counts[c["name"]] == 1 else []
            hidden = None
    return _outermost(stacks)


def _linked(model: nn.Module, parent: str, a: dict, b: dict, counts: dict[str, int]) -> int | None:
    """The index i of b's positional argument that IS a's output, when b is applied to it with a's other
    arguments, a's argument i has the output's shape, and both blocks have the same tensors; else None."""
    if counts[a["name"]] != 1 or counts[b["name"]] != 1 or a["name"] == b["name"]:
        return None
    ma, mb = _child(model, parent, a["name"]), _child(model, parent, b["name"])
    if signature(ma) != signature(mb):
        return None
    out_a = _first(a["out"])
    hits = [i for i, arg in enumerate(b["args"]) if arg is out_a] if out_a is not None else []
    if len(hits) != 1 or len(a["args"]) != len(b["args"]):
        return None
    i = hits[0]
    h_a = a["args"][i]
    if not isinstance(h_a, torch.Tensor) or h_a.shape != out_a.shape:
        return None
    others_a, others_b = a["args"][:i] + a["args"][i + 1:], b["args"][:i] + b["args"][i + 1:]
    if _same_object_or_value(others_a, others_b) and _same_object_or_value(a["kwargs"], b["kwargs"]):
        return i
    return None


def _same_computation(model: nn.Module, parent: str, first: dict, c: dict) -> bool:
    """The first block's computation with block c's tensors reproduces block c's recorded output."""
    template = _child(model, parent, first["name"])
    block = _child(model, parent, c["name"])
    tensors = dict(block.named_parameters())
    tensors.update(dict(block.named_buffers()))
    try:
        out = _first(functional_call(template, tensors, c["args"], c["kwargs"], strict=False))
    except Exception:
        return False
    ref = _first(c["out"])
    if out is None or ref is None or out.shape != ref.shape:
        return False
    scale = max(1.0, float(ref.abs().max())) if ref.numel() else 1.0
    return bool((out - ref).abs().max() <= FUNC_ATOL * scale) if ref.numel() else True


def _static_stacks(model: nn.Module, cands: dict[str, list[str]], min_depth: int) -> list[Stack]:
    """Without an example input: runs inside nn.Sequential (applied in order by construction), same class/repr."""
    stacks = []
    for parent, _ in cands.items():
        seq = model.get_submodule(parent) if parent else model
        if not isinstance(seq, nn.Sequential):
            continue
        run: list[str] = []
        children = list(seq.named_children())
        for i, (name, child) in enumerate(children + [(None, None)]):
            if child is not None and run:
                prev = seq.get_submodule(run[-1])
                if type(prev) is type(child) and repr(prev) == repr(child) and signature(prev) == signature(child):
                    run.append(name)
                    continue
            if len(run) >= min_depth:
                stacks.append(Stack(parent, run, *_counts(seq.get_submodule(run[0])), verified=False,
                                    notes=["not traced (no example input): order and computation assumed"]))
            run = [name] if child is not None and signature(child) else []
    return _outermost(stacks)


def _outermost(stacks: list[Stack]) -> list[Stack]:
    """Drop stacks nested inside a block of another stack."""
    blocks = {p for s in stacks for p in s.paths}
    out = []
    for s in sorted(stacks, key=lambda s: (s.parent.count("."), s.parent, s.paths[0])):
        prefix_hit = any(s.parent == b or s.parent.startswith(b + ".") for b in blocks)
        if not prefix_hit:
            out.append(s)
    return out
