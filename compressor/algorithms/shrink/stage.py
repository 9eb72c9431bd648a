"""shrink: fine-tune with selective shrinkage of the weights the loss is insensitive to.

Bonetta, Ribero, Cancelliere, "Regularization-based Pruning of Irrelevant Weights in Deep Neural Architectures",
Applied Intelligence 2023 (arXiv 2204.04977). With g = dL/dw of the current minibatch (treated as a constant),
the relevance-decay regularizer R(w) = gamma * sum exp(-|g|/alpha) w^2 gives the update

    w <- w - eta * (g + 2 * gamma * exp(-|g|/alpha) * w)

applied in ONE backward pass by adding the decay to the gradient before the optimizer step (the authors' code
does two). Irrelevant weights (|g| ~ 0) get the full decay, relevant ones (|g| >> alpha) a classic update; a
weight counts as relevant when exp(-|g|/alpha) < 0.5. alpha is scaled per layer by default (alpha_l = median
|g| of layer l, refreshed each epoch): on small models the paper's alpha = 1 is not selective at all
(docs/ALGORITHMS.md §1); the absolute alpha is an option. Variant: the LOBSTER rule (Tartaglione et al., Neural
Networks 2022), w <- w - lambda * w * max(0, 1 - |g|) after the step. Optional manifold-preserving term
(ours, seeded by Sartipi & Bernal, arXiv 2305.17119): mu * sum_l ||G(H_l) - G(F_l)||^2 / B^2 between the
row-normalised Gram matrices of chosen layers' features in the compressed (H) and frozen original (F) model.
Optionally (shrink.distill > 0) the loss adds distillation to the original (Hinton, Vinyals, Dean 2015), as prune's
option does; off by default (docs/ALGORITHMS.md §2).
"""
from __future__ import annotations

from torch import nn

from compressor.core.contract import StageContext
from compressor.core.finetune import distill_hook
from compressor.core.shrinkage import ShrinkConfig, run_shrinkage, shrink_targets
from compressor.judge.search import Snapshot, attempt
from compressor.stage import Outcome, Stage, StageResult

INERT_LOW, INERT_HIGH = 0.01, 0.99


def small_fraction(model: nn.Module, names: list[str], threshold: float = 1e-3) -> float:
    params = dict(model.named_parameters())
    total = sum(params[n].numel() for n in names)
    small = sum(int((params[n].detach().abs() < threshold).sum()) for n in names)
    return small / total if total else 0.0


class ShrinkStage(Stage):
    name = "shrink"
    summary = "fine-tune with selective shrinkage: irrelevant weights decay, relevant ones get a classic update"
    Config = ShrinkConfig
    follows = frozenset()
    needs_training_data = True

    @classmethod
    def default_targets(cls, weights, model) -> list[str]:
        return shrink_targets(weights, ShrinkConfig())

    def apply(self, ctx: StageContext) -> StageResult:
        cfg = self.config
        before = small_fraction(ctx.model, shrink_targets(ctx.weights, cfg))
        distill = distill_hook(ctx, cfg.distill, cfg.temperature) if cfg.distill > 0 else None
        # the selected epoch must be within shrink's share of the run's budget (judge/budget.py), else the stage
        # spends nothing: a later prune that rejects every step keeps shrink's state without judging it again
        trial = attempt(lambda: run_shrinkage(ctx, cfg, cfg.epochs, "shrink", keep_start=False, extra_loss=distill),
                        lambda: ctx.judge(ctx.stage_budget(self.name, cfg.max_drop)), Snapshot(ctx.model))
        (result, names), decision = trial.value, trial.decision
        after = small_fraction(ctx.model, names)
        relevant = [h.get("relevant", 0.0) for h in result.history[1:]]
        notes = [f"{cfg.rule} rule on {len(names)} tensors; best {result.best.name} {result.best.value:.4g} at epoch "
                 f"{result.best_epoch}; |w| < 1e-3: {before:.1%} -> {after:.1%}",
                 f"per epoch (loss / {result.best.name} / fraction relevant): " + "; ".join(
                     f"{h['loss']:.4f} / {h['select']:.4g} / {h.get('relevant', 0.0):.3f}" for h in result.history[1:]),
                 f"validation {decision.describe()}" + ("" if decision.accepted else ": restored the input weights")]
        mean_rel = sum(relevant) / len(relevant) if relevant else 0.0
        if mean_rel < INERT_LOW or mean_rel > INERT_HIGH:
            notes.append(f"WARNING: the fraction of relevant weights is ~{mean_rel:.3f}: the selective part is inert "
                         "(the rule acts as plain decay or not at all); adjust alpha/alpha_scale")
        history = [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in h.items()} for h in result.history]
        outcome = Outcome("compressed" if trial.kept else "input", "within_budget" if trial.kept else "none_within",
                          after, "fraction of |w| < 1e-3", decision.bound, decision.budget)
        return StageResult(model=ctx.model, notes=notes, decision=notes[2], outcome=outcome,  # the budget's verdict
                           metrics={"history": history, "small_weight_fraction": after, "relevant_mean": mean_rel})
