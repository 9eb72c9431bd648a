"""Decisions as configured: --confidence reaching every decision, and prune's note on fine-tunes that did not help
(prune's lookahead, patience and restore, and its lr / batch_size under shrinkage: tests/test_prune_search.py)."""
from __future__ import annotations

import yaml

from tests.conftest import HELDOUT, SAMPLES, TRAIN, read_report, run_cli

FAST = ["--set", "prune.epochs_per_step=1", "--set", "prune.max_steps_per_epoch=5", "--set", "prune.patience=0",
        "--set", "prune.codebook=off"]


def test_confidence_reaches_the_decisions_and_the_recipe(tmp_path):
    out = tmp_path / "out"
    res = run_cli(SAMPLES / "digits_mlp.pt2", "--pipeline", "prune", "--data", HELDOUT, "--train-data", TRAIN,
                  "--out", out, "--quiet", *FAST, "--set", "prune.schedule=0.3", "--confidence", "0.95")
    assert res.code in (0, 3), res
    notes = " ".join(read_report(out)["stages"][0]["notes"])
    # two looks (lookahead 1; patience 0 and no codebook here) share the 5%: each bounds at 97.5% (judge/looks.py)
    assert "97.5% upper confidence bound (95% for the whole search of 2 looks" in notes
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
