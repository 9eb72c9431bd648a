"""rpg: convert a trained model to recurrent-parameter-generator ring form, and ship only the ring.

Wang, Chen, Yu et al., "Compact and Optimal Deep Learning with Recurrent Parameter Generators", WACV 2023
(docs/ALGORITHMS.md §3). The selected conv/linear weights (default: all but the first and the last layer's, as the paper
keeps its stem and classifier) are generated from one ring A of N values,

    W_l = reshape( c_l * s(k) * A[(a*k + b) mod N], shape_l ),   s(k) = 1 - 2*(fmix32((k + o) mod 2^32) >> 31),

with a and b drawn from the stage seed (gcd(a, N) = 1) and a per-layer scale c_l. Our post-processing adaptation
(the paper trains from scratch): project the trained weights onto the ring in closed form,

    A_r = sum_{k: slot(k)=r} s_k c_k w_k / sum_{k: slot(k)=r} c_k^2,

then fine-tune the ring and the ordinary parameters with the shared loop (training set; validation selects).
The ring size is then judged with the run's budget rule and grown while over it (`compressor.algorithms.rpg.fit`).
DoF = N + every ordinary parameter. `model.safetensors` stores the ring, the ordinary parameters, the seed and
layout and a checksum of the regenerated weights (checked on load); the ONNX graph stores only the ring and
builds the index map in-graph (`compressor.algorithms.rpg.onnx_graph`). After prune, the masks of generated weights are
applied after generation, so pruned weights stay zero.
"""
from __future__ import annotations

import copy
import fnmatch
import math
from dataclasses import dataclass
from typing import Literal

import torch

from compressor.algorithms.rpg.fit import RingFit, fit_ring, ring_schedule
from compressor.algorithms.rpg.ring import RING_NAME, RingLayer
from compressor.core.contract import StageContext
from compressor.core.finetune_options import FinetuneOptions
from compressor.core.layers import WeightInfo, select
from compressor.core.params import unique_param_count
from compressor.errors import StageError
from compressor.judge.looks import growth_chances
from compressor.judge.search import first_within, lowest_bound
from compressor.schema import option, with_default
from compressor.stage import Outcome, Stage, StageResult

# N = 25% of the generated weights, chosen with distill=1 on validation data (the comparison: docs/ALGORITHMS.md §3).
DEFAULT_RING_FRACTION = 0.25


@dataclass
class RpgConfig(FinetuneOptions):
    # 1e-2 recovers the projection faster than 1e-3 on the digits models; distillation on by default
    lr: float = with_default(FinetuneOptions, "lr", 1e-2)
    distill: float = with_default(FinetuneOptions, "distill", 1.0)
    include: tuple[str, ...] = option((), "glob patterns of weights generated from the ring (default: every "
                                          "conv/linear weight except the first and the last layer's)")
    exclude: tuple[str, ...] = option((), "glob patterns of weights that stay ordinary parameters")
    ring_fraction: float | None = option(None, f"ring size N as a fraction of the generated weights (default "
                                               f"{DEFAULT_RING_FRACTION} when no other size is set: always leaves room)",
                                         gt=0, le=1)
    dof_fraction: float | None = option(None, "ring size such that DoF (ring + ordinary params) is this fraction of "
                                              "the whole model's parameters (refused if the ordinary ones exceed it)",
                                        gt=0, le=1)
    ring_size: int | None = option(None, "absolute ring size N", ge=1)
    grow: bool = option(True, "if the fine-tuned ring is over budget on validation (the run's paired upper bound, "
                              "see max_drop), grow N by grow_factor (ring_size / ring_fraction / dof_fraction is the "
                              "start), while below the generated weights, until one is within; if none is, keep "
                              "the stage's input (false: keep the first N whatever it costs)")
    grow_factor: float = option(1.5, "factor between successive ring sizes tried (a smaller one tries thousands)",
                                ge=1.05, le=10)
    scale: Literal["rms", "kaiming"] = option("rms", "per-layer scale c_l: the layer's trained weight RMS, or "
                                                     "sqrt(2/fan_in)")
    epochs: int = option(20, "fine-tuning epochs after the projection (0: projection only)", ge=0)
    select: Literal["last", "best"] = option("last", "state kept after fine-tuning: the last epoch (the cosine "
                                                     "schedule's converged state), or the best epoch on a slice of "
                                                     "training rows (never the validation set that judges it)")
    verify_onnx: bool = option(True, "export once, rewrite the graph, and compare ONNX Runtime with torch")

    def validate(self) -> str | None:
        """What the fields' ranges cannot say alone."""
        if sum(v is not None for v in (self.ring_size, self.ring_fraction, self.dof_fraction)) > 1:
            return "set one of ring_size, ring_fraction and dof_fraction"
        return None


def generated_weights(weights: list[WeightInfo], cfg: RpgConfig) -> list[WeightInfo]:
    """The weights generated from the ring, in graph order (ctx.weights order)."""
    if cfg.include:
        return select(weights, cfg.include, cfg.exclude)
    matrices = [w for w in weights if w.is_matrix_weight][1:-1]
    return [w for w in matrices if not any(fnmatch.fnmatchcase(w.name, p) for p in cfg.exclude)]


def tied_names(model: torch.nn.Module, names: set[str]) -> tuple[str, str] | None:
    """(generated name, alias) when a generated weight is also reachable under another parameter name."""
    first: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        other = first.setdefault(id(p), name)
        if other != name and (name in names or other in names):
            return (other, name) if other in names else (name, other)
    return None


def ring_size_for(cfg: RpgConfig, total_params: int, generated: int) -> int:
    """N from the config: absolute, a fraction of the generated weights, or from the DoF fraction of the model.

    The default is a fraction of the generated weights (at least one slot), never of the whole model: a DoF
    fraction is refused on a model whose ordinary parameters alone exceed it (a small depthwise CNN's are 22%)."""
    ordinary = total_params - generated
    if cfg.ring_size is not None:
        n = cfg.ring_size
    elif cfg.dof_fraction is None:
        n = max(1, round((cfg.ring_fraction or DEFAULT_RING_FRACTION) * generated))
    else:
        n = round(cfg.dof_fraction * total_params) - ordinary
        if n < 1:
            raise StageError(f"rpg: dof_fraction {cfg.dof_fraction} leaves no room for a ring: the ordinary "
                             f"parameters alone are {ordinary / total_params:.1%} of the model; raise "
                             "rpg.dof_fraction or set rpg.ring_fraction")
    if not 1 <= n <= generated:
        raise StageError(f"rpg: ring size {n} must be between 1 and the {generated} generated weights")
    return n


def layer_scale(weight: torch.Tensor, keep: torch.Tensor | None, how: str) -> float:
    """c_l: the RMS of the layer's (kept) trained weights, or sqrt(2/fan_in) (Kaiming)."""
    if how == "kaiming":
        return math.sqrt(2.0 / max(1, math.prod(weight.shape[1:])))
    w = weight.detach().float()
    if keep is not None:
        w = w[keep]
    rms = float(w.pow(2).mean().sqrt()) if w.numel() else 0.0
    return rms if rms > 0 else 1.0


def take_masks(ctx: StageContext, names: list[str]) -> torch.Tensor | None:
    """Move the masks of generated weights out of the registry into one keep-vector (None if none is pruned)."""
    if not any(n in ctx.masks for n in names):
        return None
    params = dict(ctx.model.named_parameters())
    parts = []
    for n in names:
        keep = ctx.masks.masks.pop(n, None)
        parts.append(torch.ones(params[n].numel(), dtype=torch.bool) if keep is None else keep.reshape(-1).cpu())
    return torch.cat(parts)


class RpgStage(Stage):
    name = "rpg"
    summary = "recurrent parameter generator: weights generated from one shared ring (Wang et al., WACV 2023)"
    Config = RpgConfig
    needs_training_data = True
    follows = frozenset({"shrink", "prune"})

    def apply(self, ctx: StageContext) -> StageResult:
        cfg = self.config
        if isinstance(ctx.model, torch.jit.ScriptModule):
            raise StageError("rpg: a TorchScript model cannot run on generated weights (the ring calls the model "
                             "through torch.func.functional_call, which TorchScript does not support); export it "
                             "with torch.export (.pt2), or pass its state_dict with --arch")
        chosen = generated_weights(ctx.weights, cfg)
        if not chosen:
            raise StageError("rpg: no weights to generate (the first and last conv/linear layers stay ordinary); "
                             "name them with rpg.include")
        params = dict(ctx.model.named_parameters())
        missing = [w.name for w in chosen if w.name not in params]
        if missing:
            raise StageError(f"rpg: {missing[0]} is not a parameter of the working model")
        tied = tied_names(ctx.model, {w.name for w in chosen})
        if tied:
            raise StageError(f"rpg: {tied[0]} shares its tensor with {tied[1]}; generating tied weights is not "
                             "supported (exclude it with rpg.exclude)")
        total_params = unique_param_count(ctx.model)
        generated = sum(w.numel for w in chosen)
        sizes = ring_schedule(ring_size_for(cfg, total_params, generated), generated, cfg.grow, cfg.grow_factor)
        names = [w.name for w in chosen]
        input_masks = ctx.masks.state()
        keep = take_masks(ctx, names)
        layers, offset = [], 0
        for w in chosen:
            layer_keep = None if keep is None else keep[offset:offset + w.numel].reshape(w.shape)
            layers.append(RingLayer(w.name, w.shape, offset, layer_scale(params[w.name], layer_keep, cfg.scale)))
            offset += w.numel
        budget = self.budget(ctx)
        # every size may be kept wrongly, by its fine-tuned or its projected state (judge/looks.py)
        self.chances = growth_chances(len(sizes)) * (2 if cfg.epochs > 0 else 1)
        fits, chosen_fit = self._search(ctx, sizes, layers, keep, generated, budget)
        if cfg.grow and chosen_fit.decision is not None and not chosen_fit.decision.accepted:
            for name, mask in input_masks.items():
                ctx.masks.set(name, mask)
            return self._input_kept(ctx, fits, generated, budget)
        model, layout, n = chosen_fit.model, chosen_fit.layout, chosen_fit.n
        dof = unique_param_count(model)
        notes = [f"{len(layers)} weights ({generated:,} values) generated from a ring of N={n:,} "
                 f"(each slot read {generated // n}-{math.ceil(generated / n)} times); "
                 f"slot(k)=({layout.a}*k+{layout.b}) mod {n}, seed {ctx.stage_seed}; DoF {dof:,} = "
                 f"{dof / total_params:.1%} of {total_params:,} parameters"]
        if keep is not None:
            notes.append(f"prune masks of {len(names)} generated weights applied after generation "
                         f"({1 - float(keep.float().mean()):.1%} of generated weights stay zero)")
        notes += self._search_notes(ctx, fits, chosen_fit, generated, budget)
        metrics = {"dof": dof, "ring_size": n, "generated_weights": generated, "ring_reuse": round(generated / n, 3),
                   "dof_fraction": round(dof / total_params, 5), "generated_layers": names,
                   "ring_sizes_tried": [f.summary(generated) for f in fits]}
        if chosen_fit.projection_val is not None:
            metrics["projection_val_metric"] = chosen_fit.projection_val
        if cfg.epochs > 0:
            metrics["val_metric"], metrics["best_epoch"] = chosen_fit.val, chosen_fit.epoch
        if chosen_fit.decision is not None:
            metrics["drop_bound"] = round(chosen_fit.decision.bound, 4)
        if ctx.loaded.exported and cfg.epochs > 0 and any(n.endswith("running_mean") for n, _ in model.named_buffers()):
            notes.append("a .pt2 model: batch-norm statistics stayed frozen while fine-tuning")
        entry = {"kind": "rpg", **layout.as_dict(), "masked": keep is not None, "checksum": model.checksum()}
        ctx.weights = [w for w in ctx.weights if w.name not in set(names)] + [WeightInfo(RING_NAME, (n,), "other")]
        d = chosen_fit.decision
        stop = "unjudged" if d is None else ("within_budget" if d.accepted else "over_budget")  # grow=false keeps it
        outcome = Outcome("compressed", stop, n / generated, "ring size / generated weights",
                          d.bound if d is not None else None, budget)
        return StageResult(model=model, notes=notes, metrics=metrics, structure=entry, verify_onnx=cfg.verify_onnx,
                           outcome=outcome)

    def _input_kept(self, ctx: StageContext, fits: list[RingFit], generated: int, budget: float) -> StageResult:
        """No ring size below the generated weights is within budget: the stage's input, unchanged, and why."""
        tried = "; ".join(f"N={f.n:,} ({f.n / generated:.0%}): bound {f.decision.bound:.2f}" for f in fits)
        why = " (--time-limit ended the search)" if ctx.out_of_time() else ""
        notes = [f"WARNING: no ring smaller than the {generated:,} generated weights is within budget{why} "
                 f"({budget:.2f} points; {tried}): rpg kept its input (a ring of all the generated weights would "
                 "save nothing, so it is not fitted); a larger --val-data, --max-drop or rpg.epochs leaves room"]
        lowest = min((f.decision.bound for f in fits), default=None)
        return StageResult(model=ctx.model, notes=notes, outcome=Outcome("input", "none_within", None, "", lowest, budget),
                           metrics={"ring_sizes_tried": [f.summary(generated) for f in fits], "kept_input": True})

    def budget(self, ctx: StageContext) -> float:
        """rpg's share of the run's budget (RunContext.stage_budget): rpg.max_drop, else half of --max-drop when a
        stage follows, else all."""
        return ctx.stage_budget(self.name, self.config.max_drop)

    def _search(self, ctx: StageContext, sizes: list[int], layers: list[RingLayer], keep: torch.Tensor | None,
                generated: int, budget: float) -> tuple[list[RingFit], RingFit]:
        """Fit the ring sizes of the schedule in order until one is within budget (every fit starts from a copy of
        the stage's input model); if none is, the one with the lowest bound on its validation drop."""
        def decision_of(fit: RingFit):
            return fit.decision

        def fitted(task):
            tried: list[RingFit] = []
            for n in sizes:
                task.status(f"N={n:,} ({n / generated:.0%} of the generated weights, at most {len(sizes)} sizes): "
                            "projecting")
                # a copy unless the one size is kept whatever it costs (grow=false): the input may be kept instead
                base = ctx.model if len(sizes) == 1 and not self.config.grow else copy.deepcopy(ctx.model)
                fit = fit_ring(ctx, self.config, base, layers, n, keep, budget, task.status, self.chances)
                task.advance(status=f"N={n:,}: " + ("no validation data" if fit.decision is None else
                                                    f"projection val {fit.projection_val:.4g}, fine-tuned val "
                                                    f"{fit.val:.4g}, {fit.decision.describe()}"))
                tried.append(fit)
                yield fit
                best = lowest_bound(tried, decision_of)  # resumed: `fit` was over budget
                for other in tried:
                    if other is not best:
                        other.model = None  # only the lowest bound can still be kept: free the others

        # no total: one plain line per ring size tried (a known total would rate-limit them, run/progress.py)
        with ctx.reporter.task("rpg ring size", None) as task:
            fits = first_within(fitted(task), decision_of, ctx.out_of_time)
        last = fits[-1]
        if last.decision is None or last.decision.accepted:
            return fits, last
        return fits, lowest_bound(fits, decision_of)

    def _search_notes(self, ctx: StageContext, fits: list[RingFit], chosen: RingFit, generated: int,
                      budget: float) -> list[str]:
        cfg = self.config
        notes = [f"projection only: validation {chosen.projection_val:.4g}"] if chosen.projection_val is not None else []
        if cfg.epochs > 0 and chosen.epoch == 0:
            notes.append(f"fine-tuned ring and ordinary parameters {cfg.epochs} epochs: its bound was higher than "
                         "the projection's, so the projected ring is kept")
        elif cfg.epochs > 0:
            notes.append(f"fine-tuned ring and ordinary parameters {cfg.epochs} epochs: validation {chosen.val:.4g} "
                         f"({cfg.select} epoch {chosen.epoch})")
        if chosen.decision is None:
            return notes
        tried = "; ".join(f"N={f.n:,} ({f.n / generated:.0%}): bound {f.decision.bound:.2f} "
                          f"{'within' if f.decision.accepted else 'over'}" for f in fits)
        rule = (f"ring size rule: a ring is kept only if the {chosen.decision.confidence:.1%} upper confidence bound "
                f"({ctx.confidence:.0%} for the whole search of {self.chances} looks: judge/looks.py) on its "
                f"paired validation drop ({chosen.decision.n} samples) is within {budget:.2f} points ("
                + ("rpg.max_drop" if cfg.max_drop is not None else "rpg's default share") + f" of --max-drop "
                f"{ctx.max_drop:.2f}); " + (f"N x {cfg.grow_factor:g} while over" if cfg.grow else
                                            "rpg.grow=false: N is not grown"))
        notes += [rule, f"ring sizes tried: {tried}"]
        if not chosen.decision.accepted:
            notes.append(f"WARNING: no ring size tried is within budget on validation: kept N={chosen.n:,}, the "
                         f"lowest bound ({chosen.decision.describe()}); the run's gate reports the result")
        return notes
