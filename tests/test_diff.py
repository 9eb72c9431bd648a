"""`compress diff` on synthetic reports: runs of different source models are refused unless allowed, a latency
change inside both runs' timing spread is labelled as noise, and no cell is a placeholder."""
from __future__ import annotations

import json
import time

import pytest

from compressor.runtime import timing
from compressor.io.data import load_dataset
from compressor.report.diff import MISSING, diff_rows
from tests.conftest import HELDOUT, run_cli


def report(sha: str = "a" * 64, onnx_ms: float = 0.030, spread: list[float] | None = None,
           base_ms: float = 0.050, base_spread: list[float] | None = None) -> dict:
    """A minimal report.json as a run writes it: model.onnx timed, model.safetensors not."""
    return {
        "verdict": "pass", "model": {"path": "m.pt2", "sha256": sha}, "pipeline": ["quantize"],
        "baseline": {"metric": "accuracy", "value": 97.0, "latency_ms": base_ms,
                     "latency_spread_ms": base_spread or [base_ms * 0.95, base_ms * 1.1]},
        "artifacts": [
            {"path": "model.onnx", "bytes": 60000, "gzip_bytes": 50000, "latency_ms": onnx_ms,
             "latency_spread_ms": spread or [onnx_ms * 0.95, onnx_ms * 1.1], "fp32_baseline_latency_ms": base_ms},
            {"path": "model.safetensors", "bytes": 57000, "gzip_bytes": 47000, "latency_ms": None}],
        "gate": {"passed": True, "final": 96.9, "drop": 0.1},
    }


def write(tmp_path, name: str, rep: dict):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(rep))
    return path


@pytest.mark.parametrize("markdown", [(), ("--markdown",)])
def test_different_source_models_are_refused_with_one_line(tmp_path, markdown):
    a, b = write(tmp_path, "a", report()), write(tmp_path, "b", report(sha="b" * 64))
    res = run_cli("diff", a, b, *markdown)
    assert res.code == 2, res
    assert res.stdout == "" and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert res.stderr.startswith("error: the two reports are runs of different source models")
    assert "--allow-different-models" in res.stderr


def test_different_source_models_compared_with_the_flag_and_a_warning(tmp_path):
    a, b = write(tmp_path, "a", report()), write(tmp_path, "b", report(sha="b" * 64))
    res = run_cli("diff", a, b, "--markdown", "--allow-different-models")
    assert res.code == 0, res
    assert res.stdout.startswith("> WARNING: the two runs compressed different source models")
    res = run_cli("diff", a, b, "--allow-different-models")
    assert res.code == 0 and "different source models" in res.stderr and "model.onnx bytes" in res.stdout


def test_same_model_has_no_warning(tmp_path):
    a, b = write(tmp_path, "a", report()), write(tmp_path, "b", report(onnx_ms=0.031))
    res = run_cli("diff", a, b, "--markdown")
    assert res.code == 0 and "WARNING" not in res.stdout + res.stderr


def row(rows, start: str) -> tuple[str, str, str, str]:
    found = [r for r in rows if r[0].startswith(start)]
    assert len(found) == 1, (start, rows)
    return found[0]


def test_latency_change_within_both_spreads_is_labelled_noise():
    a = report(onnx_ms=0.030, spread=[0.028, 0.036])
    b = report(onnx_ms=0.034, spread=[0.033, 0.040])  # +13%, but inside A's own p10-p90
    q, x, y, change = row(diff_rows(a, b), "model.onnx ORT ms,")
    assert q == "model.onnx ORT ms, median (p10-p90)"
    assert x == "0.030 (0.028-0.036)" and y == "0.034 (0.033-0.040)"
    assert change.startswith("+0.004 (+13.3%)") and change.endswith("within noise")


def test_latency_change_outside_the_spreads_is_not_noise():
    a = report(onnx_ms=0.030, spread=[0.029, 0.031])
    b = report(onnx_ms=0.060, spread=[0.058, 0.063])
    change = row(diff_rows(a, b), "model.onnx ORT ms,")[3]
    assert change == "+0.030 (+100.0%)"
    # the machine ran B at half speed: each run's ratio to its own fp32 timing shows no change beyond noise
    b = report(onnx_ms=0.060, spread=[0.058, 0.063], base_ms=0.100, base_spread=[0.095, 0.110])
    assert row(diff_rows(a, b), "model.onnx ORT ms / its run's fp32 ms")[3].endswith("within noise")
    assert not row(diff_rows(a, b), "fp32 original ORT ms")[3].endswith("within noise")


def assert_every_cell_filled(rows):
    for r in rows:
        assert all(cell.strip() and cell.strip() != "-" for cell in r), r
        assert (r[1], r[2]) != (MISSING, MISSING), r


def test_every_cell_filled_or_the_row_absent():
    a, b = report(), report(onnx_ms=0.2)
    rows = diff_rows(a, b)
    assert_every_cell_filled(rows)
    assert not any(r[0].startswith("model.safetensors ORT") for r in rows)  # never timed: no row
    assert row(rows, "pipeline")[3] == "same" and row(rows, "gate")[3] == "same"


def test_a_value_only_one_run_recorded_says_so():
    """An older report without spreads, an artifact and a sparsity only one run has: filled cells, not '-'."""
    a, b = report(), report()
    for entry in (a["baseline"], a["artifacts"][0]):
        del entry["latency_spread_ms"]
    b["artifacts"].append({"path": "extra.onnx", "bytes": 1000, "gzip_bytes": 900, "latency_ms": 0.01})
    b["sparsity"] = {"sparsity": 0.5}
    b["pipeline"] = []
    rows = diff_rows(a, b)
    assert_every_cell_filled(rows)
    assert row(rows, "extra.onnx bytes")[1:] == (MISSING, "1,000", "only in B")
    assert row(rows, "sparsity")[1:] == (MISSING, "50.00%", "only in B")
    assert row(rows, "pipeline")[1:] == ("quantize", "none", "changed")
    onnx = row(rows, "model.onnx ORT ms,")
    assert onnx[1] == "0.030" and "(" in onnx[2] and "within noise" not in onnx[3]  # no spread in A: no verdict


def test_a_report_of_a_real_run_diffs_with_itself(tmp_path, cnn_quantized):
    rows = diff_rows(*[json.loads((cnn_quantized / "report.json").read_text())] * 2)
    assert_every_cell_filled(rows)
    assert row(rows, "model.onnx ORT ms,")[3].endswith("within noise")
    assert row(rows, "fp32 original ORT ms")[3].endswith("within noise")


class _Session:
    """An ONNX Runtime stand-in whose runs take 1, 2, 3, ... ms in turn."""

    def __init__(self):
        self.runs = 0

    def get_inputs(self):
        return [type("I", (), {"name": "x"})()]

    def run(self, names, feed):
        self.runs += 1
        time.sleep(0.001 * (self.runs % 5 + 1))


def test_spread_brackets_the_median_of_the_same_runs():
    median, (p10, p90) = timing.ort_latency_spread_ms(_Session(), load_dataset(HELDOUT, ["x"]))
    assert p10 < median < p90 and 1.0 <= p10 and p90 < 6.0 * 1.5
    assert timing.percentile([4.0], 10) == timing.percentile([4.0], 90) == 4.0
    assert timing.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 90) == pytest.approx(4.6)

