"""The one budget rule (judge/budget.py): a paired upper confidence bound on the validation drop, never widened."""
from __future__ import annotations

import torch

from compressor.core.masks import MaskRegistry
from compressor.io.data import Dataset
from compressor.run.pipeline import RunContext
from compressor.run.progress import Reporter
from compressor.judge.budget import drop_bound, sample_scores, within_budget
from compressor.judge.kind import MetricChoice
from compressor.judge.saturation import (class_probability_scores, saturated, saturation_note,
                                         within_budget_both)
from tests.conftest import HELDOUT, SAMPLES, TRAIN, read_report, run_cli


def paired(n: int, lost: int, gained: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n samples the baseline gets right except `gained`; the candidate loses `lost` of them and wins `gained`."""
    base = torch.ones(n)
    base[:gained] = 0
    cand = base.clone()
    cand[:gained] = 1
    cand[gained:gained + lost] = 0
    return base, cand


def test_identical_predictions_have_a_zero_bound():
    base, cand = paired(180, 0)
    assert within_budget(base, cand, 0.0).accepted
    assert drop_bound(base, cand) == (0.0, 0.0)


def test_the_bound_is_above_the_observed_drop_and_never_widens_the_budget():
    # the old rule accepted any drop up to two validation samples (1.11 points here) whatever max_drop said
    base, cand = paired(180, 2)
    d = within_budget(base, cand, 1.0, confidence=0.75)
    assert abs(d.drop - 200 / 180) < 1e-9 and d.bound > d.drop
    assert not d.accepted
    assert not within_budget(*paired(180, 1), 0.5).accepted


def test_churn_widens_the_bound_at_the_same_net_drop():
    quiet = within_budget(*paired(400, 2), 1.0)
    churn = within_budget(*paired(400, 12, gained=10), 1.0)
    assert abs(quiet.drop - churn.drop) < 1e-9
    assert churn.bound > quiet.bound + 0.3
    assert quiet.accepted and not churn.accepted


def test_more_samples_narrow_the_bound_and_confidence_widens_it():
    small, large = within_budget(*paired(100, 1), 2.0), within_budget(*paired(10000, 100), 2.0)
    assert abs(small.drop - large.drop) < 1e-9 and large.bound < small.bound
    lo, hi = drop_bound(*paired(500, 3), 0.6), drop_bound(*paired(500, 3), 0.99)
    assert hi[1] > lo[1]


def test_sample_scores_follow_the_primary_metric():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert sample_scores(logits, torch.tensor([0, 0, 0]), None).tolist() == [1, 0, 1]
    ref = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    assert sample_scores(logits, None, ref).tolist() == [1, 0, 1]
    emb, emb_ref = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    cos = sample_scores(emb.reshape(2, 3, 1), None, emb_ref.reshape(2, 3, 1))
    assert torch.allclose(cos, torch.tensor([1.0, 2 ** -0.5], dtype=torch.float64))


def test_prune_spends_no_more_than_the_runs_gate(tmp_path):
    """A run gate stricter than prune.max_drop binds the stop rule, and every kept step is within the bound."""
    out = tmp_path / "o"
    res = run_cli(SAMPLES / "digits_mlp.pt2", "--pipeline", "prune", "--set", "prune.codebook=off",
                  "--set", "prune.epochs_per_step=1", "--set", "prune.patience=0", "--set", "prune.rate=0.5",
                  "--set", "prune.max_drop=5", "--data", HELDOUT, "--train-data", TRAIN, "--out", out,
                  "--quiet", "--max-drop", "0.3")
    report = read_report(out)
    prune = report["stages"][0]
    kept = [h for h in prune["history"][1:] if h["sparsity"] <= prune["sparsity"] + 1e-9]
    assert all(h["drop_bound"] <= 0.3 + 1e-9 for h in kept), prune["history"]
    assert "within 0.30 points" in " ".join(prune["notes"]), prune["notes"]
    assert res.code in (0, 3)


def test_saturated_validation_rejects_what_the_0_1_bound_accepts():
    """Every one of 126 samples still right (0/1 bound 0), but the true-class probability fell 3 points on average:
    the plain rule accepts, the saturated-validation rule rejects and names the probability bound as decisive."""
    n = 126
    hard = torch.ones(n)
    gen = torch.Generator().manual_seed(0)
    base_p = 0.99 + 0.01 * torch.rand(n, generator=gen)
    cand_p = base_p - 0.03 - 0.02 * torch.rand(n, generator=gen)  # still > 0.5 for every sample: nothing flips
    assert saturated(hard)
    assert within_budget(hard, hard, 1.0).accepted
    d = within_budget_both(hard, hard, base_p, cand_p, 1.0, 0.75, "accuracy")
    assert not d.accepted and d.rule == "true-class probability" and d.bound > 3.0
    assert "decided by the true-class probability" in d.describe() and "0/1 accuracy bound 0.00" in d.describe()


def test_sharper_predictions_leave_the_decision_to_the_0_1_bound():
    """Fine-tuning usually raises the class probability: the second bound then never makes the rule stricter,
    and a 0/1 loss over budget is still rejected by the 0/1 bound."""
    base, cand = paired(180, 3)
    base_p, cand_p = torch.full((180,), 0.9), torch.full((180,), 0.95)
    d = within_budget_both(base, cand, base_p, cand_p, 1.0, 0.75, "accuracy")
    alone = within_budget(base, cand, 1.0)
    assert d.accepted == alone.accepted is False and d.bound == alone.bound and d.rule == "0/1 accuracy"
    ok = within_budget_both(*paired(180, 0), base_p, cand_p, 1.0, 0.75, "accuracy")
    assert ok.accepted and not saturated(torch.tensor([1.0, 0.0]))


def test_class_probability_scores_follow_labels_or_the_original():
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    p = class_probability_scores(logits, torch.tensor([1, 0]), None, "accuracy")
    assert torch.allclose(p, torch.tensor([0.5, 1 / (1 + torch.e ** -2)], dtype=torch.float64))
    tokens = torch.tensor([[[0.0, 0.0], [0.0, 2.0]]])  # one sample, two positions
    ref = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])     # the original predicts class 0, then class 1
    q = class_probability_scores(tokens, None, ref, "agreement")
    assert q.shape == (1,) and abs(float(q[0]) - (0.5 + 1 / (1 + torch.e ** -2)) / 2) < 1e-9
    assert class_probability_scores(logits, None, logits, "cosine") is None


def test_prune_on_a_saturated_split_bounds_the_class_probability(tmp_path):
    """digits_mlp's seed-2 split of its own training data: the original is right on all 99 samples. The run says
    so, and each kept step is within budget on both scores (the history names the score that decided)."""
    out = tmp_path / "o"
    run_cli(SAMPLES / "digits_mlp.pt2", "--pipeline", "prune", "--set", "prune.codebook=off",
            "--set", "prune.epochs_per_step=1", "--set", "prune.patience=0", "--set", "prune.rate=0.5",
            "--data", HELDOUT, "--train-data", TRAIN, "--out", out, "--quiet", "--seed", "2")
    report = read_report(out)
    assert any(n.startswith("validation saturated: the original is right on all 99") for n in report["notes"])
    steps = report["stages"][0]["history"][1:]
    assert any(h["rule"] == "true-class probability" for h in steps), steps
    kept = [h for h in steps if h["sparsity"] <= report["stages"][0]["sparsity"] + 1e-9]
    assert all(h["drop_bound"] <= 1.0 + 1e-9 for h in kept), steps


def test_the_report_line_says_whether_validation_is_saturated():
    assert saturation_note(torch.ones(40), "accuracy").startswith("validation saturated: the original is right on "
                                                                  "all 40")
    assert "wrong on 1 of 3" in saturation_note(torch.tensor([1.0, 0.0, 1.0]), "accuracy")


def _judging_context(model, reference, labels=None, metric="agreement"):
    x = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    val = Dataset({"x": x}, labels, "constructed")
    return RunContext(model=model, original=model, loaded=None, train=None, val=val, calib=None, seed=0,
                      stage_index=0, device=torch.device("cpu"), baseline_val=None, val_reference=reference,
                      masks=MaskRegistry(), plan=["prune"], reporter=Reporter(quiet=True), weights=[],
                      metric=MetricChoice(metric, "constructed"))


def test_non_finite_outputs_never_pass_and_a_non_finite_original_falls_back_to_0_1():
    model = torch.nn.Linear(2, 3)
    with torch.no_grad():
        out = model(torch.arange(12, dtype=torch.float32).reshape(6, 2))
    # the original's own outputs, one row infinite: its class probability is NaN, so the 0/1 rule alone decides
    reference = out.clone()
    reference[0, int(out[0].argmax())] = float("inf")  # the same predicted class
    decision = _judging_context(model, reference).judge()
    assert decision.accepted and decision.bound < 1.0
    # a candidate giving NaN is rejected outright, with an infinite bound (rankings see it as the worst)
    broken = torch.nn.Linear(2, 3)
    with torch.no_grad():
        broken.weight.fill_(float("nan"))
    decision = _judging_context(model, out).judge(model=broken)
    assert not decision.accepted and decision.bound == float("inf")
