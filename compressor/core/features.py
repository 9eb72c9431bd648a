"""Tap intermediate features of a model during its normal forward pass, on eager and `.pt2` modules alike.

Eager modules get forward hooks on named submodules. A `.pt2` module has no callable submodules, so we insert
a recording node after the tapped graph nodes (found by the module path in each node's `nn_module_stack`
metadata, or by the op that consumes a weight) and remove it again on `close()`.
"""
from __future__ import annotations

import fnmatch

import torch
from torch import nn

from compressor.core.layers import VIEW_OPS, _op_name


_STORES: dict[int, dict] = {}  # graph nodes carry the store's id (fx would copy a dict argument)


def _record(store: int | dict, key: str, value):
    (_STORES[store] if isinstance(store, int) else store)[key] = value
    return value


def _weight_consumer(graph: torch.fx.Graph, weight: str) -> torch.fx.Node | None:
    for node in graph.nodes:
        if node.op == "get_attr" and str(node.target) == weight:
            cur = node
            for _ in range(5):
                users = [u for u in cur.users if u.op == "call_function"]
                if not users:
                    return None
                if _op_name(users[0].target) in VIEW_OPS:
                    cur = users[0]
                    continue
                return users[0]
    return None


def _module_output(graph: torch.fx.Graph, pattern: str) -> list[tuple[str, torch.fx.Node]]:
    last: dict[str, torch.fx.Node] = {}
    for node in graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        for path, _ in stack.values():
            path = path.replace("L['self'].", "").replace("L__self__.", "")
            if fnmatch.fnmatchcase(path, pattern):
                last[path] = node
    return list(last.items())


class FeatureTap:
    """`tap.features` holds the latest forward's tapped outputs, keyed by layer."""

    def __init__(self, model: nn.Module, weights: list[str], patterns: tuple[str, ...] = ()) -> None:
        self.model = model
        self.features: dict[str, torch.Tensor] = {}
        _STORES[id(self)] = self.features
        self._handles = []
        self._nodes: list[torch.fx.Node] = []
        if isinstance(model, torch.fx.GraphModule):
            graph = model.graph
            points: list[tuple[str, torch.fx.Node]] = []
            if patterns:
                for p in patterns:
                    points += _module_output(graph, p)
            else:
                for w in weights:
                    node = _weight_consumer(graph, w)
                    if node is not None:
                        points.append((w.rsplit(".", 1)[0], node))
            for key, node in points:
                with graph.inserting_after(node):
                    rec = graph.call_function(_record, (id(self), key, node))
                node.replace_all_uses_with(rec, delete_user_cb=lambda u: u is not rec)
                self._nodes.append(rec)
            model.recompile()
        else:
            modules = dict(model.named_modules())
            names = [n for n in modules if any(fnmatch.fnmatchcase(n, p) for p in patterns)] if patterns else \
                [w.rsplit(".", 1)[0] for w in weights if w.rsplit(".", 1)[0] in modules]
            for name in names:
                self._handles.append(modules[name].register_forward_hook(
                    lambda _m, _i, out, key=name: _record(self.features, key, out)))

    def close(self) -> None:
        _STORES.pop(id(self), None)
        for h in self._handles:
            h.remove()
        if self._nodes:
            graph = self.model.graph
            for rec in self._nodes:
                rec.replace_all_uses_with(rec.args[2])
                graph.erase_node(rec)
            self.model.recompile()
        self._handles, self._nodes = [], []


def gram(features: torch.Tensor) -> torch.Tensor:
    """Row-normalised Gram (pairwise cosine similarity) matrix of a batch's flattened features."""
    f = features.reshape(features.shape[0], -1).float()
    f = torch.nn.functional.normalize(f, dim=1, eps=1e-8)
    return f @ f.t()


def manifold_loss(current: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum_l ||G(H_l) - G(F_l)||_F^2 / B^2 (docs/ALGORITHMS.md §1, similarity-preserving manifold term)."""
    total = None
    for key, h in current.items():
        if key not in reference or not isinstance(h, torch.Tensor):
            continue
        b = h.shape[0]
        term = (gram(h) - gram(reference[key]).detach()).pow(2).sum() / (b * b)
        total = term if total is None else total + term
    return total if total is not None else torch.zeros(())
