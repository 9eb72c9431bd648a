"""The one fine-tuning loop every stage shares (shrink, prune, rpg, basis).

Trains on the training set, selects its epoch by the task loss on a fixed slice of the training rows
(`StageContext.selection_rows`; a loss, since a model that has learnt its training rows scores 100% on them in every
epoch) and restores the best state: never on the validation set, which then judges the chosen state (a choice on the
judging set makes the judgement optimistic: judge/looks.py), nor on held-out. An epoch that raised the loss (a rate
too high) is therefore not kept. With labels the loss is cross-entropy; without labels it is distillation
towards the frozen original model's outputs (computed once for the training set: teacher.py), chosen by the run's
metric (judge/kind.py): logits (agreement) ->
KL divergence at temperature T, scaled by T^2 (Hinton et al. 2015, "Distilling the knowledge in a neural
network"); embeddings or regression outputs (cosine, mse) -> (1 - cosine) + MSE relative to the target's mean
square, so the direction and the scale of the vectors are both kept (a softmax of an embedding is meaningless). A
distillation trains with dropout and other stochastic layers off (`enter_training`). Masks are honoured after every
optimizer step.
Hooks let a stage add to the gradient before the step (shrink's relevance decay), act after it, or add a loss
term (the manifold-preserving term).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from compressor.core.contract import StageContext
from compressor.core.precision import MixedPrecision
from compressor.io.data import Dataset
from compressor.judge.budget import is_better
from compressor.judge.metrics import Metrics
from compressor.runtime.calls import EVAL_BATCH, call_model, set_train, set_train_for_distillation
from compressor.runtime.parallel import data_parallel, from_rank0, my_share, share_weight, sync_buffers

DISTILL_TEMPERATURE = 2.0
GradHook = Callable[[nn.Module, int], dict[str, float] | None]  # after backward, before step; may return stats
StepHook = Callable[[nn.Module], None]
LossHook = Callable[[nn.Module, Dataset, torch.Tensor], torch.Tensor]  # extra loss term from (model, batch, out)


@dataclass
class FinetuneSettings:
    epochs: int = 5
    lr: float = 1e-3
    batch_size: int = 64
    optimizer: str = "adam"  # adam | sgd
    momentum: float = 0.9
    cosine: bool = True
    max_steps_per_epoch: int = 0  # 0: a full pass over the training set


@dataclass
class FinetuneResult:
    best: Metrics | None
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    out_of_time: bool = False  # --time-limit ended it before its last step (the last epoch entry is partial)


def make_optimizer(params: Iterable[nn.Parameter], s: FinetuneSettings) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if s.optimizer == "sgd":
        return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum)
    return torch.optim.Adam(params, lr=s.lr)


def distill_loss(out: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Label-free loss towards the original's outputs: "kl" for logits (over the last axis, so per-token logits
    [B, T, V] distil per token), else cosine + relative MSE on each sample's flattened output."""
    if kind == "kl":
        t = DISTILL_TEMPERATURE
        logits, ref = out.reshape(-1, out.shape[-1]), target.reshape(-1, target.shape[-1])
        return nn.functional.kl_div(torch.log_softmax(logits / t, -1), torch.log_softmax(ref / t, -1),
                                    reduction="batchmean", log_target=True) * t * t
    o, r = out.reshape(out.shape[0], -1), target.reshape(target.shape[0], -1)
    cos = nn.functional.cosine_similarity(o, r, dim=1, eps=1e-12)
    mse = ((o - r) ** 2).mean() / ((r ** 2).mean() + 1e-12)
    return (1 - cos).mean() + mse


def task_loss(ctx: StageContext, model: nn.Module, batch: Dataset, out: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with labels when the run's metric is accuracy, else distillation (`distill_loss`)."""
    loss_kind = ctx.metric.loss
    if not distils(ctx, batch):
        return nn.functional.cross_entropy(out.reshape(out.shape[0], -1), batch.labels.to(out.device))
    target = ctx.teacher(batch)
    return distill_loss(out, target, "kl" if loss_kind == "ce" else loss_kind)


def distils(ctx: StageContext, data: Dataset) -> bool:
    """Whether `task_loss` on `data` is distillation towards the original (no labels, or no cross-entropy metric)."""
    return data.labels is None or ctx.metric.loss != "ce"


def enter_training(ctx: StageContext, model: nn.Module, data: Dataset) -> None:
    """Training mode for a fine-tune on `data`: a distillation keeps stochastic layers off
    (`set_train_for_distillation`); cross-entropy on labels trains as the model was trained, dropout included."""
    if distils(ctx, data):
        set_train_for_distillation(model)
    else:
        set_train(model, True)


@torch.no_grad()
def selection_loss(ctx: StageContext, model: nn.Module) -> Metrics:
    """The task loss (`task_loss`) on the run's selection rows, in eval mode: what a fine-tune keeps its best epoch
    by (lower is better)."""
    rows, total = ctx.selection_rows(), 0.0
    was_training = model.training
    set_train(model, False)
    for batch in rows.batches(EVAL_BATCH):
        out = call_model(model, batch, ctx.device)
        total += float(task_loss(ctx, model, batch, out.float() if out.is_floating_point() else out)) * len(batch)
    set_train(model, was_training)
    # data-parallel ranks choose the same epoch: rank 0's loss decides (float rounding may differ between ranks)
    return Metrics("loss on training rows", from_rank0(total / max(len(rows), 1)), higher_is_better=False)


def distill_hook(ctx: StageContext, weight: float, temperature: float):
    """Knowledge distillation (Hinton, Vinyals, Dean 2015) to the original model: weight * T^2 *
    KL(softmax(teacher / T) || softmax(student / T)) over the flattened outputs, added to the task loss. Only for
    labelled data (class logits): without labels the task loss already matches the original's outputs. On a small
    training set the model has memorised, cross-entropy alone has almost no gradient left; the teacher's soft targets
    keep pulling a pruned or re-parameterized model towards the original's function, margins included."""
    def hook(model: nn.Module, batch, out: torch.Tensor) -> torch.Tensor:
        if batch.labels is None:
            return out.new_zeros(())
        target = ctx.teacher(batch).reshape(out.shape[0], -1)
        log_p = torch.log_softmax(out.reshape(out.shape[0], -1) / temperature, -1)
        kl = nn.functional.kl_div(log_p, torch.log_softmax(target / temperature, -1), log_target=True,
                                    reduction="batchmean")
        return weight * temperature ** 2 * kl
    return hook


def finetune(ctx: StageContext, model: nn.Module, settings: FinetuneSettings, *, desc: str = "fine-tune",
             params: Iterable[nn.Parameter] | None = None, grad_hook: GradHook | None = None,
             step_hook: StepHook | None = None, loss_hook: LossHook | None = None,
             select_best: bool = True, keep_start: bool = True,
             train_mode: Callable[[nn.Module], None] | None = None) -> FinetuneResult:
    """Fine-tune `model` in place; returns the history of losses and selection losses (the best state is restored).

    `train_mode`, if given, is called after the model is put in training mode each epoch (e.g. to keep some
    modules' batch-norm statistics frozen). With `keep_start=False` the starting state is not a candidate and an
    equal loss goes to the later epoch (for shrinkage, where a later epoch is the more compressible one).
    Past --time-limit (`ctx.out_of_time()`) no further step is taken: the epoch so far is scored and the best
    state kept as usual.
    In a data-parallel run (runtime/parallel.py) each rank trains on its share of every batch's rows and DDP averages the
    gradients, so the steps are those of the whole batch. `ctx.precision` (--precision) autocasts the forward
    pass; the loss, weights and validation stay float32 (core/precision.py).
    """
    train, _ = ctx.require_training(desc)
    gen = ctx.generator()
    opt = make_optimizer(params if params is not None else model.parameters(), settings)
    n_batches = math.ceil(len(train) / settings.batch_size)
    steps = min(n_batches, settings.max_steps_per_epoch) if settings.max_steps_per_epoch else n_batches
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, settings.epochs * steps)) if settings.cosine else None
    start = selection_loss(ctx, model) if select_best else None
    best = start if keep_start else None
    best_state = copy.deepcopy(model.state_dict()) if select_best else None
    result = FinetuneResult(best, 0, [{"epoch": 0, "select": start.value if start else None}])
    step, trained = 0, data_parallel(model, ctx.device)
    mixed = MixedPrecision(ctx.precision, ctx.device)
    with ctx.reporter.task(desc, settings.epochs * steps) as task:
        for epoch in range(1, settings.epochs + 1):
            enter_training(ctx, model, train)
            if train_mode is not None:
                train_mode(model)
            total, count, stats_sum = 0.0, 0, {}
            for i, batch in enumerate(train.batches(settings.batch_size, gen)):
                if i >= steps or ctx.out_of_time():
                    result.out_of_time = i < steps
                    break
                opt.zero_grad(set_to_none=True)
                rows, batch = len(batch), my_share(batch)
                with mixed.autocast():
                    out = call_model(trained, batch, ctx.device)
                out = out.float() if out.is_floating_point() else out  # the loss in float32 (core/precision.py)
                loss = task_loss(ctx, model, batch, out)
                if loss_hook is not None:
                    loss = loss + loss_hook(model, batch, out)
                mixed.backward(loss * share_weight(rows))
                if not mixed.unscale(opt):  # fp16 overflow: the scaler skips this step (and lowers its scale)
                    mixed.step(opt)
                    continue
                if grad_hook is not None:
                    for k, v in (grad_hook(model, step) or {}).items():
                        stats_sum[k] = stats_sum.get(k, 0.0) + v
                ctx.masks.mask_grads(model)
                mixed.step(opt)
                ctx.masks.apply(model)
                if step_hook is not None:
                    step_hook(model)
                if sched is not None:
                    sched.step()
                step += 1
                total += float(loss.detach())
                count += 1
                task.advance(status=f"loss {total / count:.4f}")
            if result.out_of_time and count == 0:
                break  # nothing trained since the last validation
            set_train(model, False)
            sync_buffers(model)
            metrics = selection_loss(ctx, model) if select_best else None  # keeping the last epoch: no choice
            entry = {"epoch": epoch, "loss": total / max(count, 1), "select": metrics.value if metrics else None,
                     **{k: v / max(count, 1) for k, v in stats_sum.items()}}
            result.history.append(entry)
            task.status(f"epoch {epoch}/{settings.epochs} loss {entry['loss']:.4f}"
                        + (f" loss on training rows {metrics.value:.4g}" if metrics else ""))
            if metrics is not None and (result.best is None or is_better(
                    metrics.value, result.best.value, metrics.higher_is_better, ties=not keep_start)):
                result.best, result.best_epoch = metrics, epoch
                best_state = copy.deepcopy(model.state_dict())
            if result.out_of_time:
                entry["stopped"] = "time limit"
                break
    if len(result.history) == 1:  # --time-limit before the first step: the start is the result
        result.best = result.best or start or selection_loss(ctx, model)
        result.history[0]["select"] = result.best.value
    if select_best:
        model.load_state_dict(best_state)
        ctx.masks.apply(model)
    set_train(model, False)
    return result
