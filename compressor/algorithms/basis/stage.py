"""basis: compress stacks of same-shaped blocks by a change of basis of their depth-wise weights, without data.

Queiruga, Erichson, Hodgkinson, Mahoney, "Stateful ODE-Nets using Basis Function Expansions" (NeurIPS 2021;
arXiv 2106.10820), docs/ALGORITHMS.md §4. A stack of D blocks is the weight function theta(t) in the piecewise-constant
basis with D functions; each scalar weight is projected in L2 onto K functions of the chosen basis (normal
equations M c = b, Gauss-Legendre quadrature on cells aligned with both bases' breakpoints, see
`compressor.algorithms.basis.functions`). Batch-norm running means and variances are projected the same way (variances
clamped positive). The stack then stores the K coefficient sets only and forms each of its n steps' weights from them
(`compressor.algorithms.basis.stack`). The no-retraining claim holds for models trained smooth in depth (refinement
training); on a plain ResNet or transformer the stage reports what the projection costs and offers a fine-tune.
"""
from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from compressor.algorithms.basis.functions import Basis, projection_matrix, resolve_size, valid_size
from compressor.algorithms.basis.hierarchy import example_inputs, hierarchical_model
from compressor.algorithms.basis.search import SizeFit, search_notes, size_schedule
from compressor.algorithms.basis.stack import BasisStack, StackPassthrough, block_layout, block_row, set_child
from compressor.algorithms.basis.stacks import Stack, detect_stacks
from compressor.core.contract import StageContext
from compressor.core.finetune import FinetuneSettings, finetune
from compressor.core.finetune_options import StageBudget
from compressor.core.params import unique_param_count
from compressor.errors import StageError
from compressor.judge.looks import growth_chances
from compressor.judge.search import first_within
from compressor.schema import option
from compressor.stage import Outcome, Stage, StageResult

BasisKind = Literal["piecewise_constant", "piecewise_linear", "discontinuous_linear", "legendre"]


@dataclass
class BasisConfig(StageBudget):
    basis: BasisKind = option("piecewise_constant", "target basis: piecewise_constant, piecewise_linear (hat "
                              "functions), discontinuous_linear, legendre (polynomials)")
    size: float = option(0.5, "functions per stack, the first size tried (see grow): a whole number (K), or a "
                              "fraction of the stack's depth", gt=0)
    n_steps: int = option(0, "evaluation steps per stack (forward Euler at t=j/n); 0 = the original depth", ge=0)
    stacks: tuple[str, ...] = option((), "glob patterns of stack names (e.g. stage1.*) to compress; empty = all")
    min_depth: int = option(2, "shortest run of blocks treated as a stack", ge=2)
    finetune: bool | Literal["auto"] = option("auto", "fine-tune the coefficients after projection (needs "
                                              "--train-data): true, false, or auto = only when the projection "
                                              "is over basis's budget on validation (see max_drop)")
    grow: bool = option(True, "while a size is over budget on validation (after the fine-tune, if any), grow every "
                              "stack's K by grow_factor; a stack whose K would reach its depth is left as it was")
    grow_factor: float = option(1.5, "factor between successive sizes tried (at least one more function)",
                                ge=1.05, le=10)
    finetune_epochs: int = option(3, "fine-tune epochs", ge=1)
    finetune_lr: float = option(1e-3, "fine-tune learning rate (Adam, cosine schedule)", gt=0)
    remask: bool = option(False, "after prune: re-derive masks on the coefficients at the blocks' sparsity "
                          "(otherwise the merged, denser weights are kept)")

    def validate(self) -> str | None:
        """What the fields' ranges cannot say alone."""
        if self.size >= 1 and not float(self.size).is_integer():
            return "size must be a fraction in (0, 1) or a whole number of functions"
        return None


def target_size(kind: str, size: float, depth: int) -> int:
    """K for one stack: resolved from the config, then the nearest valid size of the basis."""
    k = resolve_size(size, depth)
    if kind in ("piecewise_linear", "discontinuous_linear"):
        k = max(k, 2)
    if kind == "discontinuous_linear" and k % 2:
        k = k + 1 if k + 1 <= depth else k - 1
    problem = valid_size(kind, k)
    if problem:
        raise StageError(f"basis: {problem}")
    return k


def install_stack(model: nn.Module, parent: str, blocks: list[str], basis: Basis, n_steps: int,
                  coef: torch.Tensor | None, hidden_arg: int = 0) -> BasisStack:
    """Swap the blocks of a stack for one BasisStack (at the first block) and passthroughs."""
    container = model.get_submodule(parent) if parent else model
    template = container._modules[blocks[0]]
    layout, fixed = block_layout(template)
    stack = BasisStack(template, layout, fixed, basis, n_steps or len(blocks), len(blocks), coef, hidden_arg)
    training = template.training
    set_child(container, blocks[0], stack)
    for name in blocks[1:]:
        set_child(container, name, StackPassthrough(stack).train(training))
    return stack.train(training)


@torch.no_grad()
def project_stack(model: nn.Module, stack: Stack, basis: Basis, n_steps: int) -> BasisStack:
    """Project one detected stack onto `basis` (c = P theta, P = M^-1 B) and install it."""
    container = model.get_submodule(stack.parent) if stack.parent else model
    blocks = [container._modules[b] for b in stack.blocks]
    layout, _ = block_layout(blocks[0])
    rows = torch.stack([block_row(b, layout) for b in blocks]).double()  # (D, width)
    p = projection_matrix(Basis("piecewise_constant", stack.depth), basis)  # (K, D)
    coef = (torch.from_numpy(p) @ rows).float()
    if basis.kind != "legendre":  # nodal coefficients are values: keep variances positive there too
        start = 0
        for name, shape, _ in layout:
            size = int(torch.Size(shape).numel())
            if name.endswith("running_var"):
                coef[:, start:start + size].clamp_(min=1e-5)
            start += size
    return install_stack(model, stack.parent, stack.blocks, basis, n_steps, coef, stack.hidden_arg)


def _remask(ctx: StageContext, stack: Stack, module: BasisStack, path: str, remask: bool) -> str | None:
    """Move the blocks' masks onto the coefficients (top-|c| per slice at the blocks' mean sparsity)."""
    names = [f"{p}.{n}" for p in stack.paths for n, _, _ in module.layout]
    old = {n: ctx.masks.masks.pop(n) for n in names if n in ctx.masks}
    if not old or not remask:
        return f"{path}: {len(old)} masks dropped (projection merges the blocks' masks)" if old else None
    keep = torch.ones_like(module.coef, dtype=torch.bool)
    start = 0
    for name, shape, _ in module.layout:
        size = int(torch.Size(shape).numel())
        masks = [old[f"{p}.{name}"] for p in stack.paths if f"{p}.{name}" in old]
        if masks:
            density = float(torch.stack([m.float().mean() for m in masks]).mean())
            kept = max(1, int(round(density * size)))
            seg = module.coef.detach()[:, start:start + size].abs()
            thresh = seg.topk(kept, dim=1).values[:, -1:]
            keep[:, start:start + size] = seg >= thresh
        start += size
    ctx.masks.set(f"{path}.coef", keep)
    return f"{path}: masks re-derived on the coefficients ({1 - keep.float().mean():.1%} zero)"


def _project(ctx: StageContext, work: nn.Module, stack: Stack, cfg, k: int) -> tuple[BasisStack, dict, list[str], int]:
    """Change one stack's basis to K functions in `work`: (its BasisStack, the structure record, notes, parameters
    after)."""
    problem = valid_size(cfg.basis, k)
    if problem:
        raise StageError(f"basis: {problem}")
    basis = Basis(cfg.basis, k)
    n_steps = cfg.n_steps or stack.depth
    module = project_stack(work, stack, basis, n_steps)
    path = stack.paths[0]
    stack_params = sum(int(torch.Size(s).numel()) for _, s, kind in module.layout if kind == "param") * k
    record = {"parent": stack.parent, "blocks": stack.blocks, "basis": basis.kind, "K": k, "n_steps": n_steps,
              "depth": stack.depth, "path": path, "hidden_arg": stack.hidden_arg,
              "layout": [[n, list(s), kind] for n, s, kind in module.layout], "fixed": list(module._fixed_names)}
    notes = [f"{stack.name}: {stack.depth} blocks -> {k} {basis.kind} coefficient sets, {n_steps} steps; "
             f"params {stack.params_per_block * stack.depth:,} -> {stack_params:,}"]
    mask_note = _remask(ctx, stack, module, path, cfg.remask)
    if mask_note:
        notes.append(mask_note)
    return module, record, notes, stack_params


def _freeze_stacks(model: nn.Module) -> None:
    """Fine-tuning's train mode: the stacks' batch-norm statistics stay as projected (eval mode, as for a .pt2
    model); training with batch statistics and projecting running estimates back was measured to break validation."""
    for m in model.modules():
        if isinstance(m, BasisStack):
            m.eval()


class BasisStage(Stage):
    name = "basis"
    summary = ("stacks of same-shaped blocks -> K basis coefficient sets per stack (L2 projection, no training; "
               "an example input to trace them: a .pt2's own, else --train-data/--val-data)")
    Config = BasisConfig
    needs_example_input = True
    follows = frozenset({"shrink", "prune"})

    def apply(self, ctx: StageContext) -> StageResult:
        cfg = self.config
        data = ctx.val or ctx.calib or ctx.train
        example = example_inputs(ctx.model, data, ctx.loaded.program)
        if example is None:
            raise StageError("basis: needs an example input to trace the model's stacks: pass --train-data or "
                             "--val-data")
        args, kwargs = example
        work = hierarchical_model(ctx.model, args, ctx.loaded.input_names, kwargs)
        found = detect_stacks(work, args, kwargs, cfg.min_depth)
        chosen = [s for s in found if not cfg.stacks or any(
            fnmatch.fnmatchcase(s.name, p) or fnmatch.fnmatchcase(s.paths[0], p) or fnmatch.fnmatchcase(s.parent, p)
            for p in cfg.stacks)]
        if not chosen:
            what = f" matching {list(cfg.stacks)} (found: {', '.join(s.name for s in found) or 'none'})" \
                if cfg.stacks else ""
            raise StageError(f"basis: no stack of same-shaped blocks applied one after another{what}; "
                             "see `compress inspect MODEL --data FILE`")
        judged = ctx.val is not None
        budget = ctx.stage_budget(self.name, cfg.max_drop)
        starts = [target_size(cfg.basis, cfg.size, s.depth) for s in chosen]
        levels = size_schedule(cfg.basis, starts, [s.depth for s in chosen], cfg.grow and judged, cfg.grow_factor)
        before = ctx.validate(work) if judged else None
        masks = ctx.masks.state()
        sized = sum(not SizeFit(sizes, None).unchanged for sizes in levels)  # "every stack as it was" is never judged
        self.chances = growth_chances(max(1, sized)) * (1 + (cfg.finetune == "auto" and ctx.train is not None))
        def fitted(task):
            for i, sizes in enumerate(levels):
                ctx.masks.masks = {k: v.clone() for k, v in masks.items()}  # each size starts from the input's masks
                if SizeFit(sizes, None).unchanged:
                    task.advance(status="every stack left as it was")
                    yield SizeFit(sizes, ctx.model)  # unjudged: the search ends here
                    return
                # a fresh copy of the input per size (an unflattened program cannot be deep-copied: rebuild it)
                candidate = work if len(levels) == 1 else hierarchical_model(
                    copy.deepcopy(ctx.model), args, ctx.loaded.input_names, kwargs)
                fit = self._fit(ctx, candidate, chosen, sizes, budget, task)
                task.advance(status=fit.describe())
                yield fit
                if i < len(levels) - 1:
                    fit.model = None  # over budget with a larger size still to try: free it

        # no total: one plain line per size tried (a known total would rate-limit them, run/progress.py)
        with ctx.reporter.task("basis size", None) as task:
            fits = first_within(fitted(task), lambda fit: fit.decision, ctx.out_of_time)
        kept = fits[-1]
        if kept.decision is not None and not kept.decision.accepted and len(fits) < len(levels):  # --time-limit
            kept = SizeFit([None] * len(chosen), ctx.model)
        if kept.unchanged:
            ctx.masks.masks = masks
        notes = list(kept.notes)
        metrics: dict[str, Any] = {"stacks": [r["path"] for r in kept.records], "K": kept.sizes,
                                   "stack_params_before": kept.params_before, "stack_params_after": kept.params_after,
                                   "finetuned": kept.finetuned, "sizes_tried": [f.summary() for f in fits]}
        if before is not None:
            metrics["val_before"] = before.value
            notes.append(f"validation {before.name} {before.value:.4g} before")
        metrics.update({k: v for k, v in (("val_after_projection", kept.val_projection),
                                          ("val_after_finetune", kept.val_finetune)) if v is not None})
        notes += search_notes(fits, budget, ctx.confidence, ctx.max_drop, cfg, self.chances)
        d = kept.decision
        bound = d.bound if d is not None else min((f.decision.bound for f in fits if f.decision), default=None)
        if kept.unchanged:
            metrics["dof"] = unique_param_count(ctx.model)
            return StageResult(model=ctx.model, notes=notes, metrics=metrics,
                               outcome=Outcome("input", "none_within" if any(f.decision for f in fits) else "unjudged",
                                               None, "", bound, budget))
        example_rec = [{"shape": list(a.shape), "dtype": str(a.dtype).replace("torch.", "")}
                       for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        structure = {"kind": "basis", "stacks": kept.records, "unflattened": work is not ctx.model,
                     "input_names": list(kwargs) if kwargs else list(ctx.loaded.input_names),
                     "keywords": bool(kwargs), "example": example_rec}
        # DoF: every parameter, less the running-statistics columns that share the coefficient matrix
        stats = sum(int(torch.Size(s).numel()) * m.basis.size for _, m in kept.modules for _, s, kind in m.layout
                    if kind == "buffer")
        metrics["dof"] = unique_param_count(kept.model) - stats
        stop = "unjudged" if d is None else ("within_budget" if d.accepted else "over_budget")  # grow=false keeps it
        ratio = kept.params_after / kept.params_before if kept.params_before else None
        outcome = Outcome("compressed", stop, ratio, "stack parameters after / before", bound, budget)
        return StageResult(model=kept.model, notes=notes, metrics=metrics, structure=structure, outcome=outcome)

    def _fit(self, ctx: StageContext, work: nn.Module, chosen: list[Stack], sizes: list[int | None], budget: float,
             task) -> SizeFit:
        """Project every stack of `work` with a size onto its K functions, judge it; fine-tune the coefficients when
        asked (basis.finetune=true) or when the projection is over budget (auto, with training data), and judge
        again."""
        cfg = self.config
        fit = SizeFit(sizes, work)
        for stack, k in zip(chosen, sizes):
            if k is None:
                fit.notes.append(f"{stack.name}: left as its {stack.depth} blocks (a smaller K is over budget; "
                                 "K = depth saves nothing)")
                continue
            task.status(f"K={k} for {stack.name} ({stack.depth} blocks): projecting")
            module, record, stack_notes, stack_params = _project(ctx, work, stack, cfg, k)
            fit.modules.append((record["path"], module))
            fit.records.append(record)
            fit.notes += stack_notes
            fit.params_before += stack.params_per_block * stack.depth
            fit.params_after += stack_params
        if ctx.val is not None:
            fit.val_projection = ctx.validate(work).value
            fit.projection = fit.decision = ctx.judge(budget, work, chances=self.chances)
            fit.notes.append(f"validation {fit.val_projection:.4g} after projection (no data used; "
                             f"{fit.projection.describe()})")
        fit.finetuned = cfg.finetune is True or (
            cfg.finetune == "auto" and fit.projection is not None and not fit.projection.accepted
            and ctx.train is not None)
        if fit.finetuned:
            if cfg.finetune == "auto":
                fit.notes.append("the projection is over budget: these blocks are not smooth in depth (not trained "
                                 "with refinement; docs/ALGORITHMS.md §4), so the coefficients are fine-tuned "
                                 "(basis.finetune=auto; false keeps the data-free projection)")
            res = finetune(ctx, work, FinetuneSettings(epochs=cfg.finetune_epochs, lr=cfg.finetune_lr),
                           desc="basis fine-tune", train_mode=_freeze_stacks)
            if ctx.val is not None:
                fit.val_finetune = ctx.validate(work).value
                fit.notes.append(f"fine-tuned the coefficients {cfg.finetune_epochs} epochs (best epoch "
                                 f"{res.best_epoch} on training rows): validation {fit.val_finetune:.4g}")
                fit.decision = ctx.judge(budget, work, chances=self.chances)
            if any(kind == "buffer" for _, m in fit.modules for _, _, kind in m.layout):  # stacks hold BN stats
                fit.notes.append("batch-norm statistics inside the stacks stayed frozen (as projected) while "
                                 "fine-tuning" + ("; a .pt2 model: all batch-norm statistics stayed frozen"
                                                  if ctx.loaded.exported else ""))
        elif fit.projection is not None and not fit.projection.accepted and cfg.finetune == "auto":
            fit.notes.append("the projection is over budget and there is no --train-data to fine-tune it")
        return fit
