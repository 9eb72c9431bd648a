"""The compressed form of a stack: K coefficient sets, each step's weights formed from them.

Queiruga et al. (docs/ALGORITHMS.md §4): theta(t) = sum_a phi_a(t) theta_a, and the stack runs n forward-Euler steps
    h_{j+1} = h_j + (D / n) R(theta(t_j), h_j),   t_j = j / n,   R(theta, h) = block(theta, h) - h,
where D is the original depth (eps = D makes n = D steps of the piecewise-constant basis the original stack
exactly: h_{j+1} = block_j(h_j)). The block runs through `torch.func.functional_call`, so its class does not
matter (an eager module or an `unflatten`ed `.pt2` submodule alike).

Storage: all projectable tensors of one block (floating parameters and buffers, e.g. batch-norm running
statistics) are concatenated into ONE coefficient matrix ``coef`` of shape (K, numel of one block), so the step
weights are one matrix product ``phi (n x K) @ coef``; the exporter cannot constant-fold it away (the product's
input is larger than its folding limit) and the ONNX graph stores the K coefficient sets once.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from compressor.algorithms.basis.functions import Basis

VAR_FLOOR = 1e-5  # projected running variances are clamped at this value


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"a basis stack block returned {type(out).__name__}; expected a tensor or a tuple")


def _replace_first(out: Any, h: torch.Tensor) -> Any:
    if isinstance(out, torch.Tensor):
        return h
    return type(out)([h, *out[1:]]) if isinstance(out, list) else (h, *out[1:])


class BasisStack(nn.Module):
    """Replaces the first block of a stack; runs every step. The other blocks become `StackPassthrough`."""

    def __init__(self, template: nn.Module, layout: list[tuple[str, tuple[int, ...], str]],
                 fixed: dict[str, torch.Tensor], basis: Basis, n_steps: int, depth: int,
                 coef: torch.Tensor | None = None, hidden_arg: int = 0) -> None:
        super().__init__()
        self.hidden_arg = int(hidden_arg)  # the positional argument carrying the hidden state (stacks.Stack)
        self._template = [template]  # not registered: its own tensors are never stored nor used
        self.layout = list(layout)  # (name, shape, "param"|"buffer") of each slice of a coefficient row
        self.basis, self.n_steps, self.depth = basis, int(n_steps), int(depth)
        width = sum(_numel(s) for _, s, _ in layout)
        self.coef = nn.Parameter(coef if coef is not None else torch.zeros(basis.size, width))
        phi = torch.tensor(basis.steps(self.n_steps), dtype=torch.float64)
        self.register_buffer("phi", phi.float(), persistent=False)
        self.register_buffer("phi_pinv", torch.linalg.pinv(phi).float(), persistent=False)  # (K, n)
        for name, value in fixed.items():  # non-projectable buffers (e.g. num_batches_tracked), kept once
            self.register_buffer("fixed__" + name.replace(".", "__"), value.clone())
        self._fixed_names = list(fixed)
        self._last_out: Any = None

    @property
    def template(self) -> nn.Module:
        return self._template[0]

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            template = self.__dict__.get("_template")
            if name.startswith("_") or not template:
                raise
            # containers sometimes read attributes of their first layer (nn.TransformerEncoder reads
            # layers[0].self_attn.batch_first): answer from the template
            return getattr(template[0], name)

    def step_tensors(self) -> list[dict[str, torch.Tensor]]:
        """Each step's full set of block tensors, formed from the coefficients (phi @ coef)."""
        rows = self.phi.to(self.coef.dtype) @ self.coef  # (n, width)
        fixed = {n: getattr(self, "fixed__" + n.replace(".", "__")) for n in self._fixed_names}
        steps = []
        for j in range(self.n_steps):
            out, start = dict(fixed), 0
            for name, shape, kind in self.layout:
                size = _numel(shape)
                t = rows[j, start:start + size].reshape(shape)
                if kind == "buffer":  # running statistics: never trained, updated in place by batch norm
                    t = t.detach().clone()
                if name.endswith("running_var"):
                    t = t.clamp_min(VAR_FLOOR)
                out[name] = t
                start += size
            steps.append(out)
        return steps

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        template = self.template
        try:
            template.train(self.training)
        except NotImplementedError:
            pass
        i = self.hidden_arg
        h, before, after = args[i], args[:i], args[i + 1:]
        scale = self.depth / self.n_steps
        out: Any = h
        steps = self.step_tensors()
        for tensors in steps:
            out = functional_call(template, tensors, (*before, h, *after), kwargs, strict=False)
            new = _first_tensor(out)
            h = new if self.n_steps == self.depth else h + scale * (new - h)
        if self.training:
            self._update_statistics(steps)
        out = _replace_first(out, h)
        self._last_out = out
        return out

    @torch.no_grad()
    def _update_statistics(self, steps: list[dict[str, torch.Tensor]]) -> None:
        """In training, batch norm updates each step's running statistics in place (on per-step copies); they
        are projected back onto the basis by least squares over the steps (coef = pinv(phi) @ stats)."""
        start = 0
        for name, shape, kind in self.layout:
            size = _numel(shape)
            if kind == "buffer":
                stats = torch.stack([t[name].reshape(-1) for t in steps]).to(self.coef.dtype)  # (n, size)
                self.coef.data[:, start:start + size] = self.phi_pinv.to(stats.dtype) @ stats
            start += size

    def extra_repr(self) -> str:
        return (f"basis={self.basis.kind}, K={self.basis.size}, n_steps={self.n_steps}, depth={self.depth}, "
                f"hidden_arg={self.hidden_arg}")


class StackPassthrough(nn.Module):
    """Stands where a later block of a compressed stack was: returns what the stack computed."""

    def __init__(self, stack: BasisStack) -> None:
        super().__init__()
        self._stack = [stack]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        stack = self._stack[0]
        h = args[stack.hidden_arg]
        if isinstance(stack._last_out, torch.Tensor) or stack._last_out is None:
            return h
        return _replace_first(stack._last_out, h)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def block_layout(block: nn.Module) -> tuple[list[tuple[str, tuple[int, ...], str]], dict[str, torch.Tensor]]:
    """(projectable layout, fixed buffers) of one block: floating params and buffers are projected."""
    layout, fixed = [], {}
    for name, p in block.named_parameters():
        layout.append((name, tuple(p.shape), "param"))
    for name, b in block.named_buffers():
        if b.is_floating_point():
            layout.append((name, tuple(b.shape), "buffer"))
        else:
            fixed[name] = b.detach().clone()
    return layout, fixed


def block_row(block: nn.Module, layout) -> torch.Tensor:
    """One block's tensors flattened into a coefficient row (layout order)."""
    tensors = dict(block.named_parameters())
    tensors.update(dict(block.named_buffers()))
    return torch.cat([tensors[name].detach().reshape(-1).float() for name, _, _ in layout])


def set_child(parent: nn.Module, name: str, child: nn.Module) -> None:
    """Swap a submodule (works on nn.Sequential / nn.ModuleList and on unflattened `.pt2` modules)."""
    if isinstance(parent, (nn.Sequential, nn.ModuleList)) and name.isdigit():
        parent[int(name)] = child
    else:
        parent._modules[name] = child
