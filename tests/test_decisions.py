"""Decisions as configured: prune's lookahead and restore path end to end, prune's own lr / batch_size honoured when
shrink precedes it, and --confidence reaching every decision."""
from __future__ import annotations

import yaml

import compressor.algorithms.prune.stage as prune_stage
from tests.conftest import HELDOUT, SAMPLES, TRAIN, read_report, run_cli

FAST = ["--set", "prune.epochs_per_step=1", "--set", "prune.max_steps_per_epoch=5", "--set", "prune.patience=0",
        "--set", "prune.codebook=off"]


def test_prune_looks_ahead_past_a_rejected_step_then_restores_the_last_accepted_one(tmp_path):
    out = tmp_path / "out"
    res = run_cli(SAMPLES / "digits_mlp.pt2", "--pipeline", "prune", "--data", HELDOUT, "--train-data", TRAIN,
                  "--out", out, "--quiet", *FAST, "--set", "prune.schedule=0.3,0.9,0.95,0.97,0.98",
                  "--set", "prune.target=0.98", "--set", "prune.lookahead=1")
    assert res.code in (0, 3), res
    stage = read_report(out)["stages"][0]
    history = stage["history"][1:]
    budget = 0.5 * 2  # prune is the last stage: the whole --max-drop
    rejected = [i for i, h in enumerate(history) if h["drop_bound"] > budget]
    assert rejected, history  # 90% of an MLP without fine-tuning is over a 1-point budget
    first = rejected[0]
    # lookahead 1: exactly one step past the first rejection, then the stop
    assert len(history) == min(first + 2, 5), history
    kept = [h for h in history[:first] if h["drop_bound"] <= budget]
    expected = kept[-1]["sparsity"] if kept else 0.0
    assert abs(stage["sparsity"] - expected) < 1e-6, (stage["sparsity"], history)
    outcome = stage["outcome"]
    assert outcome["stop"] == "over_budget" and outcome["unit"] == "sparsity", outcome
    assert abs(outcome["value"] - expected) < 1e-6 and outcome["bound"] > budget == outcome["budget"], outcome


def test_prune_lr_and_batch_size_apply_to_its_shrinkage_fine_tunes(tmp_path, monkeypatch):
    seen = []
    real = prune_stage.run_shrinkage

    def spy(ctx, cfg, *args, **kw):
        seen.append((cfg.lr, cfg.batch_size))
        return real(ctx, cfg, *args, **kw)

    monkeypatch.setattr(prune_stage, "run_shrinkage", spy)
    res = run_cli(SAMPLES / "digits_mlp.pt2", "--pipeline", "shrink,prune", "--data", HELDOUT, "--train-data", TRAIN,
                  "--out", tmp_path / "out", "--quiet", *FAST, "--set", "shrink.epochs=1", "--set",
                  "shrink.max_steps_per_epoch=5", "--set", "prune.schedule=0.2", "--set", "prune.lr=0.0003",
                  "--set", "prune.batch_size=32")
    assert res.code in (0, 3), res
    assert seen and set(seen) == {(0.0003, 32)}, seen


def test_confidence_reaches_the_decisions_and_the_recipe(tmp_path):
    out = tmp_path / "out"
    res = run_cli(SAMPLES / "digits_mlp.pt2", "--pipeline", "prune", "--data", HELDOUT, "--train-data", TRAIN,
                  "--out", out, "--quiet", *FAST, "--set", "prune.schedule=0.3", "--confidence", "0.95")
    assert res.code in (0, 3), res
    notes = " ".join(read_report(out)["stages"][0]["notes"])
    assert "95% upper confidence bound" in notes
    assert yaml.safe_load((out / "recipe.yaml").read_text())["confidence"] == 0.95
    assert read_report(out)["gate"]["confidence"] == 0.95
    for bad in ("0.3", "1", "abc"):
        res = run_cli(SAMPLES / "digits_mlp.pt2", "--pipeline", "prune", "--data", HELDOUT, "--train-data", TRAIN,
                      "--out", tmp_path / f"bad{bad}", "--confidence", bad)
        assert res.code == 2, (bad, res)


def test_a_fine_tune_that_makes_validation_worse_is_reported(tmp_path):
    """At lr 1 every epoch wrecks the MLP: the pruned state is kept, and the note says fine-tuning did not help."""
    out = tmp_path / "out"
    res = run_cli(SAMPLES / "digits_mlp.pt2", "--pipeline", "prune", "--data", HELDOUT, "--train-data", TRAIN,
                  "--out", out, "--quiet", "--set", "prune.epochs_per_step=3", "--set", "prune.max_steps_per_epoch=5",
                  "--set", "prune.patience=0", "--set", "prune.codebook=off", "--set", "prune.schedule=0.3",
                  "--set", "prune.lr=1.0")
    assert res.code in (0, 3), res
    note = next(n for n in read_report(out)["stages"][0]["notes"] if n.startswith("fine-tunes:"))
    assert note.startswith("fine-tunes: 1 of 3 epochs") and "in 1 no epoch beat the pruned state" in note, note
