"""judge/power.py: a validation set's resolution against each stage's budget share, and the selection-gap warning."""
from __future__ import annotations

import torch

from compressor.judge.budget import within_budget
from compressor.judge.power import (exact_gap_p, one_loss_bound, resolution_note, samples_to_lose_one,
                                    selection_gap_note)


def test_one_loss_bound_is_the_decision_rules_bound_for_one_lost_sample():
    base = torch.ones(180)
    cand = base.clone()
    cand[17] = 0
    decision = within_budget(base, cand, budget=0.5)
    assert abs(one_loss_bound(180, 0.75) - decision.bound) < 1e-9
    assert 0.92 < decision.bound < 0.94 and not decision.accepted


def test_samples_to_lose_one_is_the_smallest_set_that_admits_one_loss():
    for budget, confidence in ((0.5, 0.75), (1.0, 0.75), (0.5, 0.9)):
        n = samples_to_lose_one(budget, confidence)
        assert one_loss_bound(n, confidence) <= budget + 1e-9 < one_loss_bound(n - 1, confidence)
    assert samples_to_lose_one(0.0, 0.75) is None


def test_resolution_note_names_only_the_stages_below_one_sample():
    looks = {"shrink": 0.75, "prune": 0.75, "rpg": 0.75}
    note = resolution_note({"shrink": 0.5, "prune": 0.5, "rpg": 1.0}, 180, looks, 1.0)
    assert "shrink 0.50 (one lost sample bounds at 0.93" in note and "prune 0.50 (" in note and "rpg 1.00" not in note
    assert f"About {samples_to_lose_one(0.5, 0.75):,} validation samples" in note
    assert resolution_note({"prune": 1.0}, 180, looks, 1.0) is None
    assert resolution_note({"prune": 0.5}, 400, looks, 1.0) is None  # one sample of 400 bounds at 0.42


def test_resolution_note_reads_each_stage_s_per_look_confidence():
    """prune's default 4 looks bound each at 93.75%: on 450 samples one lost sample is 0.56, over its 0.50 share,
    while one look at 75% (0.37) would hide it."""
    assert resolution_note({"prune": 0.5}, 450, {"prune": 0.75}, 1.0) is None
    note = resolution_note({"prune": 0.5}, 450, {"prune": 0.9375}, 1.0)
    assert "prune 0.50 (one lost sample bounds at 0.56 at its 93.75% per look)" in note
    assert f"About {samples_to_lose_one(0.5, 0.9375):,} validation samples" in note


def test_selection_gap_warns_only_beyond_chance():
    mlp_val, cnn_held, mlp_held = 100 * 179 / 180, 100 * 357 / 360, 100 * 349 / 360  # digits_mlp/cnn, measured
    assert "exact p = 0.052" in selection_gap_note(mlp_val, 180, mlp_held, 360, independent=True)
    assert abs(exact_gap_p(179, 180, 349, 360) - 0.05207) < 1e-4  # scipy.stats.fisher_exact, alternative="greater"
    assert selection_gap_note(mlp_val, 180, cnn_held, 360, independent=True) is None  # a gap of 0.28: chance
    # all 180 right on validation against 357/360 held out: p = 0.30 (a normal test with per-set variances would
    # call it 1.7 standard errors, the validation term being zero)
    assert selection_gap_note(100.0, 180, cnn_held, 360, independent=True) is None
    assert selection_gap_note(100.0, 180, 100 * 340 / 360, 360, independent=True) is not None
    # a split of the training data: any gap over half a point (the model has seen those samples)
    assert "validation split of the training data" in selection_gap_note(100.0, 126, 99.44, 360, independent=False)
    assert selection_gap_note(99.6, 126, 99.44, 360, independent=False) is None


def test_a_zero_share_is_not_told_to_get_more_samples():
    assert resolution_note({"prune": 0.0}, 180, {"prune": 0.75}, 0.0) is None
