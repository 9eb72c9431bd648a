"""--time-limit: past it no search or fine-tune starts new work, each keeps the best state within budget, and the
report and the resolved recipe say so."""
from __future__ import annotations

import pytest
import yaml

from compressor.errors import UsageError
from compressor.judge.budget import BudgetDecision
from compressor.judge.search import first_within
from compressor.run.settings import parse_duration
from tests.conftest import HELDOUT, SAMPLES, TRAIN, read_report, run_cli


def test_durations():
    assert parse_duration("90", "--time-limit") == 90
    assert parse_duration("30m", "--time-limit") == 1800
    assert parse_duration("1.5h", "--time-limit") == 5400
    assert parse_duration(45, "--time-limit") == 45
    assert parse_duration(None, "--time-limit") is None
    for bad in ("0", "-3m", "abc", "m", "", "inf", True):
        with pytest.raises(UsageError, match="--time-limit"):
            parse_duration(bad, "--time-limit")


def test_a_search_draws_no_candidate_past_the_limit():
    fitted = []

    def candidates():
        for k in range(5):
            fitted.append(k)
            yield k

    def decision_of(k):
        return BudgetDecision(accepted=False, drop=1.0, bound=1.0, budget=0.5, confidence=0.75, n=10)

    assert first_within(candidates(), decision_of, stop=lambda: len(fitted) >= 2) == [0, 1]
    assert fitted == [0, 1]  # the third candidate was never fitted


def test_prune_stops_at_the_time_limit_and_keeps_a_state_within_budget(tmp_path):
    out = tmp_path / "out"
    res = run_cli(SAMPLES / "digits_mlp.pt2", "--pipeline", "prune", "--data", HELDOUT, "--train-data", TRAIN,
                  "--out", out, "--quiet", "--time-limit", "1s", "--max-drop", "100")  # only the clock can stop it
    assert res.code == 0, res
    stage = read_report(out)["stages"][0]
    assert stage["sparsity"] < 0.9, stage["sparsity"]  # the default target is never reached in a second
    assert stage["outcome"]["stop"] == "time_limit" and stage["outcome"]["value"] == stage["sparsity"]
    assert any("--time-limit reached by the end of this stage" in n for n in stage["notes"])
    assert yaml.safe_load((out / "recipe.yaml").read_text())["time_limit"] == 1.0
    bad = run_cli(SAMPLES / "digits_mlp.pt2", "--pipeline", "prune", "--data", HELDOUT, "--train-data", TRAIN,
                  "--out", tmp_path / "bad", "--time-limit", "soon")
    assert bad.code == 2 and "--time-limit 'soon'" in bad.stderr


def test_quantize_tries_no_4bit_set_past_the_limit(tmp_path):
    out = tmp_path / "out"
    res = run_cli(SAMPLES / "text_embedder.pt2", "--data", SAMPLES / "embed_heldout.npz", "--train-data",
                  SAMPLES / "embed_train.npz", "--out", out, "--quiet", "--time-limit", "0.01", "--set", "quantize.objective=size")
    assert res.code == 0, res
    notes = read_report(out)["stages"][0]["notes"]
    assert any(n.startswith("4-bit weight-only not kept: --time-limit reached after 0 of the step's tries")
               for n in notes), notes
    assert not any(n.startswith("4-bit weight-only on") for n in notes)
