"""quantize.objective: which checked form ships, by measured speed (balanced, latency) or by size. The timing is
replaced by fixed numbers where a test pins a decision, so the decision rule is tested, not this machine's load."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import onnx
import pytest

import compressor.algorithms.quantize.objective as objective
from compressor.algorithms.quantize.config import QuantizeConfig
from compressor.algorithms.quantize.stage import quantize_onnx
from compressor.export.torch_onnx import export_onnx_proto
from compressor.io import onnx_files
from compressor.io.data import load_dataset
from compressor.io.load import load_model
from compressor.io.onnx_files import save_onnx
from tests.conftest import HELDOUT, SAMPLES, TRAIN, VAL, read_report, run_cli


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """digits_cnn's fp32 graph, its data, and the bytes of its forms (objective=size: auto's int8 choice)."""
    tmp = tmp_path_factory.mktemp("objective")
    loaded = load_model(SAMPLES / "digits_cnn.pt2")
    data = {k: load_dataset(p, loaded.input_names, loaded.input_dtypes) for k, p in
            (("train", TRAIN), ("val", VAL), ("held", HELDOUT))}
    fp32 = tmp / "fp32.onnx"
    save_onnx(export_onnx_proto(loaded.module, data["held"].example()), fp32)
    forms = {}
    for name, cfg in (("size", QuantizeConfig(objective="size")), ("dynamic", QuantizeConfig(mode="dynamic"))):
        quantize_onnx(fp32, tmp / f"{name}.onnx", cfg, data["train"], 0, data["val"])
        forms[name] = tmp / f"{name}.onnx"
    return tmp, fp32, data, forms


def _timed(monkeypatch, ms: dict[str, float]) -> list[list[str]]:
    asked = []

    def fake(paths: dict[str, Path], data, timed=None) -> dict[str, float]:
        asked.append(list(paths))
        return {name: ms[name] for name in paths}
    monkeypatch.setattr(objective, "_times", fake)
    return asked


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def _run(cnn, objective_name: str, tag: str) -> tuple[Path, list[str]]:
    tmp, fp32, data, _ = cnn
    dst = tmp / f"{tag}.onnx"
    notes = quantize_onnx(fp32, dst, QuantizeConfig(objective=objective_name), data["train"], 0, data["val"])
    return dst, [n for n in notes if n.startswith("objective")]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_balanced_keeps_the_int8_choice_when_it_is_no_slower(cnn, monkeypatch):
    asked = _timed(monkeypatch, {"float": 1.0, "int8 choice": 1.05})  # within the 1.1 margin
    dst, notes = _run(cnn, "balanced", "kept")
    assert sha(dst) == sha(cnn[3]["size"]) and asked == [["float", "int8 choice"]]  # no other form was made
    assert objective.graph_form(dst) == "static" and "float 1.000 ms, int8 choice 1.050 ms" in notes[0]


def test_balanced_ships_the_all_dynamic_form_when_it_holds_and_is_faster(cnn, monkeypatch):
    _timed(monkeypatch, {"float": 1.0, "int8 choice": 1.5, "all dynamic": 0.9})
    dst, notes = _run(cnn, "balanced", "dyn")
    assert {"DynamicQuantizeLinear", "ConvInteger"} <= _ops(dst) and "QuantizeLinear" not in _ops(dst)
    assert objective.graph_form(dst) == "dynamic" and "all dynamic 0.900 ms" in notes[0]


def test_balanced_keeps_the_float_graph_when_every_int8_form_is_slower(cnn, monkeypatch):
    _timed(monkeypatch, {"float": 1.0, "int8 choice": 1.5, "all dynamic": 7.0})
    dst, notes = _run(cnn, "balanced", "float")
    assert not _ops(dst) & objective.INT8_OPS
    assert objective.graph_form(dst) == "float" and "all dynamic 7.000 ms" in notes[0]


def test_latency_ships_the_fastest_and_size_never_times(cnn, monkeypatch):
    asked = _timed(monkeypatch, {"float": 1.0, "int8 choice": 0.8, "all dynamic": 0.5})
    dst, notes = _run(cnn, "latency", "fast")
    assert objective.graph_form(dst) == "dynamic" and "ConvInteger" in _ops(dst)
    asked.clear()
    dst, notes = _run(cnn, "size", "small")
    assert sha(dst) == sha(cnn[3]["size"]) and not asked and not notes


def test_default_cli_skips_the_4bit_search_and_says_what_it_timed(tmp_path):
    """balanced, the default: no MatMulNBits (4-bit weights are computed in float32 on CPU), the times in a note,
    and the shipped graph is the one the note names, whatever this machine's timing decided."""
    out = tmp_path / "emb"
    res = run_cli(SAMPLES / "text_embedder.pt2", "--pipeline", "quantize", "--data", SAMPLES / "embed_heldout.npz",
                  "--train-data", SAMPLES / "embed_train.npz", "--val-data", SAMPLES / "embed_val.npz",
                  "--out", out, "--quiet")
    assert res.code == 0, res
    notes = read_report(out)["stages"][0]["notes"]
    ops = _ops(out / "model.onnx")
    assert "MatMulNBits" not in ops
    assert any(n.startswith("objective balanced: no 4-bit MatMul weights") for n in notes), notes
    outcome = read_report(out)["stages"][0]["outcome"]
    assert outcome["stop"] == "balanced" and outcome["kept"] == objective.graph_form(out / "model.onnx"), outcome
    assert outcome["kept"] != "4bit" and any(" ms" in n for n in notes if n.startswith("objective balanced: "))


def test_the_float_graph_ships_with_its_external_data(tmp_path, monkeypatch):
    """An export written with external data (over 2 GB; the threshold lowered here) is shipped whole when the float
    graph wins: model.onnx and its data reload and compute the fp32 export's outputs."""
    monkeypatch.setattr(onnx_files, "EXTERNAL_DATA_BYTES", 1024)
    _timed(monkeypatch, {"float": 1.0, "int8 choice": 3.0, "all dynamic": 3.0})
    out = tmp_path / "out"
    res = run_cli(SAMPLES / "digits_mlp.pt2", "--pipeline", "quantize", "--data", HELDOUT, "--train-data", TRAIN,
                  "--out", out, "--quiet")
    assert res.code == 0, res
    assert read_report(out)["stages"][0]["outcome"]["kept"] == "float"
    assert not _ops(out / "model.onnx") & objective.INT8_OPS
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)  # loads the external data it names
    assert read_report(out)["artifacts"][0]["metric_value"] == read_report(out)["baseline"]["value"]


def test_auto_without_calibration_data_is_timed_too(cnn, monkeypatch):
    """No calibration data: auto falls back to dynamic int8, which a small conv net runs slowest of all; balanced
    weighs it against the float graph like any other choice."""
    tmp, fp32, data, _ = cnn
    _timed(monkeypatch, {"float": 1.0, "int8 choice": 6.0})
    dst = tmp / "nocalib.onnx"
    notes = quantize_onnx(fp32, dst, QuantizeConfig(), None, 0, data["val"])
    assert any("no calibration data" in n for n in notes) and any("float graph is shipped" in n for n in notes)
    assert not _ops(dst) & objective.INT8_OPS


def test_nothing_left_to_make_dynamic_is_not_called_a_dynamic_form(cnn, monkeypatch):
    tmp, fp32, data, _ = cnn
    _timed(monkeypatch, {"float": 1.0, "int8 choice": 3.0, "all dynamic": 0.5})
    every = [n.name for n in onnx.load(str(fp32)).graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    dst = tmp / "excluded.onnx"
    cfg = QuantizeConfig(exclude=tuple(every[1:]))  # one weighted node left: auto's static choice keeps it
    quantize_onnx(fp32, dst, cfg, data["train"], 0, data["val"])
    writer = objective.all_dynamic_writer(fp32, None, every)  # every node excluded: nothing to write
    assert writer(tmp / "never.onnx") is False and not (tmp / "never.onnx").exists()


def test_the_terminal_says_what_each_stage_decided(tmp_path):
    out = tmp_path / "o"
    res = run_cli(SAMPLES / "digits_mlp.pt2", "--pipeline", "prune,quantize", "--data", HELDOUT, "--train-data", TRAIN,
                  "--set", "prune.target=0.5", "--set", "prune.epochs_per_step=1", "--max-drop", "100", "--out", out)
    assert res.code == 0, res
    stages = read_report(out)["stages"]
    assert stages[0]["decision"].startswith("blinded policy") and "sparsity" in stages[0]["decision"]
    assert stages[1]["decision"].startswith(("objective balanced: ", "auto: "))
    assert stages[0]["outcome"]["stop"] == "target" and stages[0]["outcome"]["kept"] == "compressed"
    assert stages[1]["outcome"]["kept"] == objective.graph_form(out / "model.onnx")
    printed = " ".join(res.stdout.split())  # rich wraps long lines
    for stage in stages:
        assert f"{stage['name']}: {' '.join(stage['decision'].split())}" in printed


def test_latency_with_a_forced_form_is_refused_not_ignored(tmp_path):
    res = run_cli(SAMPLES / "digits_mlp.pt2", "--data", HELDOUT, "--set", "quantize.mode=static",
                  "--set", "quantize.objective=latency", "--out", tmp_path / "o")
    assert res.code == 2 and "objective=latency" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res


def test_the_fp32_baseline_reuses_the_objectives_float_timing(tmp_path, monkeypatch):
    """A quantize-only run whose validation batch has held-out's shapes times the float graph once: the report's
    fp32 baseline latency is the objective's float time (the same graph, timed in turns with the int8 choice), not
    a second timing of the same graph."""
    import compressor.run.export_onnx as export_onnx

    twice = lambda *a: pytest.fail("the fp32 graph was timed twice")  # noqa: E731
    monkeypatch.setattr(export_onnx, "baseline_latency_ms", twice)
    monkeypatch.setattr(export_onnx, "ort_latency_spread_ms", twice)  # the fallback when the stage did not time it
    out = tmp_path / "mlp"
    res = run_cli(SAMPLES / "digits_mlp.pt2", "--pipeline", "quantize", "--data", HELDOUT, "--train-data", TRAIN,
                  "--val-data", VAL, "--out", out, "--quiet")
    assert res.code == 0, res
    report = read_report(out)
    timed = [n for n in report["stages"][0]["notes"] if n.startswith("objective balanced: ") and " ms" in n]
    assert timed and "failed" not in timed[0], report["stages"][0]["notes"]
    float_ms = float(re.search(r"float ([0-9.]+) ms", timed[0]).group(1))
    assert report["artifacts"][0]["fp32_baseline_latency_ms"] == pytest.approx(float_ms, abs=6e-4)


def test_model_onnx_latency_is_the_objectives_timing_of_the_shipped_graph(tmp_path, monkeypatch):
    """The graph the objective shipped was timed already (in turns with the float graph): model.onnx's latency in
    the report is that timing, found by the file's sha256, not a third timing run."""
    import compressor.run.measure as measure

    monkeypatch.setattr(measure, "ort_latency_spread_ms", lambda *a: pytest.fail("model.onnx was timed again"))
    out = tmp_path / "mlp"
    res = run_cli(SAMPLES / "digits_mlp.pt2", "--pipeline", "quantize", "--data", HELDOUT, "--train-data", TRAIN,
                  "--val-data", VAL, "--out", out, "--quiet")
    assert res.code == 0, res
    report = read_report(out)
    timed = next(n for n in report["stages"][0]["notes"] if n.startswith("objective balanced: ") and " ms" in n)
    times = dict((name, float(ms)) for name, ms in re.findall(r"(float|int8 choice|all dynamic) ([0-9.]+) ms", timed))
    name = ("all dynamic" if "all-dynamic int8 form is shipped" in timed else
            "float" if "float graph is shipped" in timed else "int8 choice")  # kept, or within the margin
    assert report["artifacts"][0]["latency_ms"] == pytest.approx(times[name], abs=6e-4), timed
