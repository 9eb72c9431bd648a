"""prune's search end to end on a model whose verdicts are fixed by construction: a rejected step, the `lookahead`
steps tried past it, the `patience` rounds of fine-tuning, the restore of the last accepted step (report, masks and
shipped weights), and prune's own lr / batch_size in its fine-tunes under selective shrinkage.

The model is a 10-class linear classifier of one-hot inputs, W = diag(5..14) plus 90 off-diagonal weights below
0.01. Pruning only off-diagonal weights (sparsity <= 0.9) moves no prediction and the true-class probability by
far less than a point: accepted. Past 0.9 a diagonal weight goes; its class's input then reads a column that is all
masked, so its logits are all zero whatever a fine-tune does: rejected, every time. Nothing depends on trained
sample models or on luck.
"""
from __future__ import annotations

import re

import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import compressor
import compressor.core.shrinkage as shrinkage

K = 10
SCHEDULE = [0.5, 0.9, 0.95, 0.97, 0.98, 0.99]  # two steps within budget, then every step over it
KEPT = 0.9


def diagonal_model() -> nn.Module:
    g = torch.Generator().manual_seed(0)
    model = nn.Linear(K, K, bias=False)
    off = (torch.rand(K, K, generator=g) * 0.009 + 0.001) * torch.sign(torch.randn(K, K, generator=g))
    with torch.no_grad():
        model.weight.copy_(torch.where(torch.eye(K, dtype=torch.bool), torch.arange(5.0, 5.0 + K).diag(), off))
    return model.eval()


def one_hot(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.arange(K).repeat(per_class)
    return torch.eye(K)[y], y


def run(tmp_path, pipeline: str = "prune", **prune) -> compressor.CompressResult:
    stages = {"prune": {"schedule": SCHEDULE, "target": SCHEDULE[-1], "codebook": "off", "max_drop": 1.0,
                        "lr": 1e-3, **prune}}
    if pipeline.startswith("shrink"):
        stages["shrink"] = {"epochs": 1, "lr": 2e-3, "batch_size": 50}
    return compressor.compress(diagonal_model(), one_hot(5), pipeline=pipeline, train_data=one_hot(20),
                               val_data=one_hot(5), stages=stages, out=tmp_path / "out", seed=0)


def assert_restored(result: compressor.CompressResult, lookahead: int) -> dict:
    """The search stopped `lookahead` + 1 rejected steps past the last accepted one and shipped that one."""
    stage = result.report["stages"][0]
    budget = stage["outcome"]["budget"]
    rows = stage["history"][1:]
    accepted = [h for h in rows if h["drop_bound"] <= budget]
    assert [h["sparsity"] for h in accepted] == [0.5, KEPT], rows
    past = rows[len(accepted):]
    assert [h["sparsity"] for h in past] == SCHEDULE[2:3 + lookahead], rows  # looked further, then stopped
    assert all(h["drop_bound"] > budget for h in past), rows
    outcome = stage["outcome"]
    assert outcome["stop"] == "over_budget" and outcome["kept"] == "compressed", outcome
    assert outcome["value"] == stage["sparsity"] == accepted[-1]["sparsity"] == KEPT, outcome
    assert outcome["bound"] == pytest.approx(past[-1]["drop_bound"], abs=1e-4), outcome  # the last step tried
    assert result.passed and f"restored {KEPT:.1%}" in stage["decision"], stage["decision"]
    # what was shipped is the accepted step's state, not the last one tried: the diagonal, every entry of it
    diagonal = torch.eye(K, dtype=torch.bool)
    weight = compressor.load(result.out, model=diagonal_model()).weight.detach()
    assert torch.equal(weight != 0, diagonal), weight
    graph = onnx.load(str(result.onnx_path)).graph
    (shipped,) = [numpy_helper.to_array(i) for i in graph.initializer if list(i.dims) == [K, K]]
    assert torch.equal(torch.from_numpy(shipped != 0), diagonal), shipped
    assert result.report["sparsity"]["sparsity"] == pytest.approx(KEPT)
    return stage


def test_a_rejected_step_is_looked_past_then_the_last_accepted_state_is_restored(tmp_path):
    result = run(tmp_path, lookahead=1, epochs_per_step=0)
    assert_restored(result, lookahead=1)
    # without fine-tunes the accepted state is the original's diagonal bit for bit: masks and weights restored
    weight = compressor.load(result.out, model=diagonal_model()).weight.detach()
    assert torch.equal(weight, diagonal_model().weight.detach() * torch.eye(K))


def test_patience_rounds_fine_tune_every_rejected_step_before_it_counts(tmp_path):
    result = run(tmp_path, lookahead=2, epochs_per_step=1, patience=2)
    stage = assert_restored(result, lookahead=2)
    # an accepted step: one fine-tune; a rejected one: 1 + patience; none for the step never tried (0.99)
    note = next(n for n in stage["notes"] if n.startswith("fine-tunes:"))
    assert re.match(r"fine-tunes: (\d+) of 1 epochs each", note).group(1) == str(2 * 1 + 3 * (1 + 2)), note


@pytest.mark.parametrize("own", [True, False])
def test_prune_lr_and_batch_size_reach_its_shrinkage_fine_tunes(tmp_path, monkeypatch, own):
    """prune.lr / prune.batch_size set: prune's fine-tunes under selective shrinkage run at them (shrink's own at
    shrink's); unset: at shrink's."""
    seen: dict[str, set] = {}
    real = shrinkage.finetune

    def spy(ctx, model, settings, **kw):
        seen.setdefault(kw["desc"].split(" step")[0], set()).add((settings.lr, settings.batch_size))
        return real(ctx, model, settings, **kw)

    monkeypatch.setattr(shrinkage, "finetune", spy)
    prune = {"lr": 3e-4, "batch_size": 32} if own else {"lr": None}
    result = run(tmp_path, "shrink,prune", epochs_per_step=1, patience=0, lookahead=0, **prune)
    assert result.report["pipeline"] == ["shrink", "prune"]
    assert seen == {"shrink": {(2e-3, 50)}, "prune": {(3e-4, 32) if own else (2e-3, 50)}}, seen


def test_weight_sharing_kept_after_every_step_was_rejected_is_a_compressed_outcome(tmp_path):
    """No pruning step within budget, but the codebook kept: the stage's weights are not its input's, and the
    outcome says so (it said kept "input" beside a "weight sharing kept" note)."""
    stages = {"prune": {"schedule": [0.99], "target": 0.99, "codebook": "on", "codebook_bits": 8, "max_drop": 1.0,
                        "epochs_per_step": 0, "codebook_epochs": 0}}
    result = compressor.compress(diagonal_model(), one_hot(5), pipeline="prune", train_data=one_hot(20),
                                 val_data=one_hot(5), stages=stages, out=tmp_path / "out", seed=0)
    stage = result.report["stages"][0]
    assert stage["sparsity"] == 0 and any("8-bit weight sharing kept" in n for n in stage["notes"]), stage["notes"]
    assert stage["outcome"]["kept"] == "compressed", stage["outcome"]
