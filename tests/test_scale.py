"""Large models in bounded memory and time: ONNX external data above the protobuf limit (threshold lowered here),
streamed gzip sizes, streamed activation taps, and latency timing that stops early for slow models."""
from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import compressor.io.onnx_files as onnx_files
import compressor.runtime.timing as timing
import compressor.verify.artifacts as artifacts
from compressor.algorithms.quantize.taps import as_rows, tapped
from compressor.export.torch_onnx import export_onnx_proto
from compressor.io.data import Dataset, load_dataset
from compressor.io.load import load_model
from compressor.io.onnx_files import copy_onnx, external_data_path, save_onnx
from compressor.runtime.calls import onnx_predict, ort_session, predict
from tests.conftest import HELDOUT, SAMPLES, TRAIN, VAL, read_report, run_cli


def test_external_data_path_writes_and_reloads(tmp_path, monkeypatch):
    """Above the threshold (lowered to 1 KB) the weights go to model.onnx.data: the file passes the checker, onnx
    and ONNX Runtime reload it with the same outputs as torch, and a copy carries its data file under its own name."""
    monkeypatch.setattr(onnx_files, "EXTERNAL_DATA_BYTES", 1024)
    model = load_model(SAMPLES / "digits_cnn.pt2").module
    data = load_dataset(HELDOUT, ["x"])
    path = tmp_path / "model.onnx"
    save_onnx(export_onnx_proto(model, data.example()), path)
    assert external_data_path(path).stat().st_size > 100_000 > path.stat().st_size
    reloaded = onnx.load(str(path))
    assert all(not t.external_data for t in reloaded.graph.initializer)  # onnx.load read the data back
    torch_out = predict(model, data)
    assert torch.allclose(onnx_predict(ort_session(path), data), torch_out, atol=1e-5)
    (tmp_path / "copy").mkdir()
    copy = tmp_path / "copy" / "other.onnx"
    copy_onnx(path, copy)
    assert external_data_path(copy).exists()
    assert torch.allclose(onnx_predict(ort_session(copy), data), torch_out, atol=1e-5)
    assert artifacts.file_sizes(path)["bytes"] == path.stat().st_size + external_data_path(path).stat().st_size


def test_quantize_runs_from_an_external_data_export(tmp_path, monkeypatch):
    """The whole quantize pipeline when the fp32 export is written with external data: model.onnx (int8, under
    the threshold's scale again) is one self-contained file that reloads."""
    monkeypatch.setattr(onnx_files, "EXTERNAL_DATA_BYTES", 1024)
    out = tmp_path / "out"
    res = run_cli(SAMPLES / "digits_mlp.pt2", "--pipeline", "quantize", "--set", "quantize.mode=dynamic",
                  "--data", HELDOUT, "--train-data", TRAIN, "--out", out)
    assert res.code == 0, res
    assert not external_data_path(out / "model.onnx").exists()
    report = read_report(out)
    assert report["artifacts"][0]["fp32_export_bytes"] > 4 * report["artifacts"][0]["bytes"] / 2
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)


def test_gzip_size_streamed_equals_gzip_compress(monkeypatch):
    monkeypatch.setattr(artifacts, "CHUNK", 4096)
    path = SAMPLES / "digits_cnn.pt2"
    assert artifacts.gzip_size(path) == len(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))


def test_taps_stream_the_same_values_batch_by_batch(tmp_path):
    """tapped(): the batches concatenated are the whole set's values; with max_rows, exactly the first rows."""
    model = load_model(SAMPLES / "digits_mlp.pt2").module
    data = load_dataset(HELDOUT, ["x"])
    path = tmp_path / "m.onnx"
    save_onnx(export_onnx_proto(model, data.example()), path)
    proto = onnx.load(str(path))
    tensor = proto.graph.node[len(proto.graph.node) // 2].output[0]
    whole = np.concatenate([v[tensor] for v in tapped(path, [tensor], data)])
    assert len(whole) == len(data)
    ref = as_rows(onnx_predict(ort_session(path), data).numpy()) if tensor == proto.graph.output[0].name else None
    assert ref is None or np.allclose(whole, ref)
    first = np.concatenate([v[tensor] for v in tapped(proto, [tensor], data, max_rows=70)])
    assert np.array_equal(first, whole[:70])
    assert len(proto.graph.output) == 1  # the proto given is left as it was


class _SlowSession:
    def __init__(self) -> None:
        self.runs = 0

    def get_inputs(self):
        return [type("I", (), {"name": "x"})()]

    def run(self, names, feed):
        self.runs += 1
        time.sleep(0.02)


@pytest.mark.parametrize("budget, most", [(0.05, 5), (100.0, 23)])
def test_latency_timing_stops_early_for_slow_runs(monkeypatch, budget, most):
    monkeypatch.setattr(timing, "LATENCY_SECONDS", budget)
    session = _SlowSession()
    timing.ort_latency_ms(session, load_dataset(HELDOUT, ["x"]))
    assert session.runs <= most and (budget < 1 or session.runs == 23)


def test_quantize_only_check_reuses_the_original_validation_outputs(tmp_path, monkeypatch):
    """With no stage before quantize, auto's check compares with the original's validation outputs the run already
    holds, instead of running the float graph over validation again in ONNX Runtime (a full fp32 pass: seconds on
    a 100M-parameter model), and ships the same bytes as when it runs the float graph; the fp32 export runs only on
    the 32 held-out samples of its parity check."""
    import compressor.algorithms.quantize.output_check as check

    opened, real_session, real_init = [], check.ort_session, check.OutputCheck.__init__
    monkeypatch.setattr(check, "ort_session",
                        lambda path, *a, **k: (opened.append(Path(path)), real_session(path, *a, **k))[1])
    args = ("--pipeline", "quantize", "--set", "quantize.objective=size", "--data", HELDOUT, "--train-data", TRAIN,
            "--val-data", VAL)
    res = run_cli(SAMPLES / "digits_mlp.pt2", *args, "--out", tmp_path / "reused")
    assert res.code == 0, res
    float_graphs = [p for p in opened if p.parent.name.startswith("compressor-q-") and p.name == "model.onnx"]
    assert opened and not float_graphs  # the candidates were checked; the float graph was never run over validation
    report = read_report(tmp_path / "reused")
    assert report["artifacts"][0]["parity_samples"] == 32
    assert report["artifacts"][0]["parity_max_abs_diff_fp32_vs_torch"] < 1e-4

    def recomputing(self, work, check, bounds, on_check=None, reference=None):
        real_init(self, work, check, bounds, on_check, None)
    monkeypatch.setattr(check.OutputCheck, "__init__", recomputing)
    res = run_cli(SAMPLES / "digits_mlp.pt2", *args, "--out", tmp_path / "recomputed")
    assert res.code == 0, res
    assert (tmp_path / "reused" / "model.onnx").read_bytes() == (tmp_path / "recomputed" / "model.onnx").read_bytes()


def test_a_latency_batch_is_reused_only_for_the_same_shapes():
    """The fp32 baseline reuses the objective's timing on validation only when validation's latency batch feeds the
    graph the same tensors (names, shapes, dtypes) as held-out's: a sequence padded to another length is other work."""
    def texts(n: int, length: int) -> Dataset:
        return Dataset({"input_ids": torch.ones(n, length, dtype=torch.int64)}, None, "texts")
    assert timing.same_batch_shapes(texts(10, 64), texts(300, 64))  # both batches are 64 rows (wrapped around)
    assert not timing.same_batch_shapes(texts(10, 48), texts(300, 64))
    assert not timing.same_batch_shapes(None, texts(300, 64))
    other = Dataset({"x": torch.ones(10, 64, dtype=torch.int64)}, None, "other")
    assert not timing.same_batch_shapes(other, texts(10, 64))


def test_the_check_reuses_validation_outputs_only_for_the_unchanged_exported_original():
    """auto's check takes the run's validation outputs as the float graph's only when they are its outputs: no stage
    changed the model, and the export's parity with torch says the graph's first output is torch's main output (a
    TorchScript model, or one whose outputs the exporter could not put main-first, can differ in order)."""
    from types import SimpleNamespace

    from compressor.algorithms.quantize.stage import _float_outputs_on_val

    original, ref = torch.nn.Linear(2, 2), torch.full((4, 3), 10.0)
    ctx = SimpleNamespace(model=original, original=original, val_reference=ref, export_parity=1e-6)
    assert _float_outputs_on_val(ctx) is ref
    assert _float_outputs_on_val(SimpleNamespace(**{**vars(ctx), "model": torch.nn.Linear(2, 2)})) is None
    assert _float_outputs_on_val(SimpleNamespace(**{**vars(ctx), "export_parity": 0.5})) is None  # other outputs
    assert _float_outputs_on_val(SimpleNamespace(**{**vars(ctx), "export_parity": None})) is None
    assert _float_outputs_on_val(SimpleNamespace(**{**vars(ctx), "val_reference": None})) is None


def test_a_working_graph_keeps_its_weights_beside_it_and_is_copied_out_as_one_file(tmp_path, monkeypatch):
    """A graph only worked on (the fp32 export quantize is given) keeps weights above WORKING_EXTERNAL_DATA_BYTES
    (lowered to 1 KB) beside it, so ONNX Runtime maps them instead of copying them; copied out (the float graph
    shipped), it is one file again, the same bytes as the one-file export."""
    model = load_model(SAMPLES / "digits_cnn.pt2").module
    data = load_dataset(HELDOUT, ["x"])
    one = tmp_path / "one.onnx"
    save_onnx(export_onnx_proto(model, data.example()), one, working=True)
    monkeypatch.setattr(onnx_files, "WORKING_EXTERNAL_DATA_BYTES", 1024)
    beside, shipped = tmp_path / "beside.onnx", tmp_path / "shipped.onnx"
    save_onnx(export_onnx_proto(model, data.example()), beside, working=True)
    save_onnx(export_onnx_proto(model, data.example()), tmp_path / "final.onnx")  # not a working graph: one file
    assert external_data_path(beside).stat().st_size > 100_000 > beside.stat().st_size
    assert not external_data_path(one).exists() and not external_data_path(tmp_path / "final.onnx").exists()
    assert torch.equal(onnx_predict(ort_session(beside), data), onnx_predict(ort_session(one), data))
    copy_onnx(beside, shipped)
    assert not external_data_path(shipped).exists()
    assert shipped.read_bytes() == one.read_bytes()


def test_quantize_writes_the_same_graph_from_a_working_export_with_external_data(tmp_path, monkeypatch):
    """Static int8 of digits_cnn from an fp32 export whose weights sit beside it (threshold lowered) is the same
    model.onnx as from the one-file export: the same ops and int8 weights, the same outputs (ONNX Runtime's
    optimizer may order a node's attributes otherwise)."""
    outs = {}
    for name, threshold in (("one", onnx_files.WORKING_EXTERNAL_DATA_BYTES), ("beside", 1024)):
        monkeypatch.setattr(onnx_files, "WORKING_EXTERNAL_DATA_BYTES", threshold)
        outs[name] = tmp_path / name
        res = run_cli(SAMPLES / "digits_cnn.pt2", "--pipeline", "quantize", "--set", "quantize.mode=static",
                      "--data", HELDOUT, "--train-data", TRAIN, "--val-data", VAL, "--out", outs[name])
        assert res.code == 0, res
    assert not external_data_path(outs["beside"] / "model.onnx").exists()
    graphs = {n: onnx.load(str(o / "model.onnx")).graph for n, o in outs.items()}
    assert [n.op_type for n in graphs["one"].node] == [n.op_type for n in graphs["beside"].node]
    assert "QuantizeLinear" in {n.op_type for n in graphs["one"].node}
    weights = {n: {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in g.initializer} for n, g in graphs.items()}
    assert weights["one"] == weights["beside"]
    data = load_dataset(HELDOUT, ["x"])
    assert torch.equal(*(onnx_predict(ort_session(o / "model.onnx"), data) for o in outs.values()))
    # the fp32 export's size counts its external data file too (the location strings add a few bytes)
    sizes = [read_report(outs[n])["artifacts"][0]["fp32_export_bytes"] for n in ("one", "beside")]
    assert 0 <= sizes[1] - sizes[0] < 2_000


def test_sessions_sharing_an_arena_compute_the_same(tmp_path):
    """Sessions timed in turns share one ONNX Runtime arena (given back after the timing): their outputs are the
    same as a session with an arena of its own."""
    model = load_model(SAMPLES / "digits_cnn.pt2").module
    data = load_dataset(HELDOUT, ["x"])
    path = tmp_path / "m.onnx"
    save_onnx(export_onnx_proto(model, data.example()), path)
    own, shared = ort_session(path), [ort_session(path, shared_arena=True) for _ in range(2)]
    rounds = timing.timed_rounds_ms(shared, data, repeats=2, warmup=1)
    assert len(rounds) >= 2 and all(len(r) == 2 and min(r) > 0 for r in rounds)
    expected = onnx_predict(own, data)
    assert all(torch.equal(onnx_predict(s, data), expected) for s in shared)
