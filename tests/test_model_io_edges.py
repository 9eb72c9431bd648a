"""Models whose inputs or outputs are not one float tensor: a dict output whose judged tensor (`logits`) is not its
first entry, and a bool mask input. Both crashed or were refused before (a tester's unseen models)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import yaml
from torch import nn

from compressor.io.data import load_dataset
from tests.conftest import HELDOUT, TRAIN, read_report, run_cli


class TwoHeads(nn.Module):
    """An embedding and class logits, returned as a dict with the embedding first."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        e = self.body(x)
        return {"emb": e, "logits": self.head(e)}


def _train_digits(model: nn.Module, steps: int = 300) -> nn.Module:
    torch.manual_seed(0)
    d = np.load(TRAIN)
    x, y = torch.from_numpy(d["x"]).float(), torch.from_numpy(d["y"]).long()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for i in range(steps):
        idx = torch.randint(0, len(x), (64,))
        loss = nn.functional.cross_entropy(model(x[idx])["logits"], y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _export(model: nn.Module, args: tuple, path) -> None:
    dyn = tuple({0: torch.export.Dim.DYNAMIC} for _ in args)
    torch.export.save(torch.export.export(model, args, dynamic_shapes=dyn, strict=False), str(path))


def test_dict_output_with_logits_second_is_judged_on_logits_in_torch_and_onnx(tmp_path):
    model = _train_digits(TwoHeads())
    _export(model, (torch.zeros(2, 1, 8, 8),), tmp_path / "two.pt2")
    out = tmp_path / "out"
    res = run_cli(tmp_path / "two.pt2", "--pipeline", "quantize", "--data", HELDOUT, "--train-data", TRAIN,
                  "--out", out, "--quiet")
    assert res.code == 0, res
    report = read_report(out)
    assert report["metric"]["name"] == "accuracy" and report["baseline"]["value"] > 80
    assert report["artifacts"][0]["parity_max_abs_diff_fp32_vs_torch"] < 1e-4
    graph = onnx.load(str(out / "model.onnx")).graph
    first = graph.output[0].type.tensor_type.shape.dim
    assert first[-1].dim_value == 10 and len(graph.output) == 2  # logits first, the embedding kept after it
    assert any("returns 2 output tensors, named logits, emb: logits drives the metric" in n for n in report["notes"])
    # the other output is verified too: its own metric against the original's, gated by --max-drop
    (emb,) = report["artifacts"][0]["outputs"]
    assert emb["output"] == "emb" and emb["metric"] == "cosine" and emb["drop"] < 1.0 and emb["passed"], emb
    assert {"name": "output:emb", "value": emb["drop"], "limit": 1.0, "passed": True} in report["gate"]["gates"]
    wrong = run_cli(tmp_path / "two.pt2", "--pipeline", "quantize", "--data", HELDOUT, "--out", tmp_path / "w",
                    "--output-metric", "boxes=mse")
    assert wrong.code == 2 and "other outputs are emb" in wrong.stderr, wrong
    mse = run_cli(tmp_path / "two.pt2", "--pipeline", "quantize", "--data", HELDOUT, "--train-data", TRAIN,
                  "--out", tmp_path / "m", "--quiet", "--output-metric", "emb=mse", "--max-drop", "0",
                  "--set", "quantize.mode=dynamic")  # a forced int8 form ships whatever --max-drop: the outputs move
    record = read_report(tmp_path / "m")["artifacts"][0]["outputs"][0]
    assert record["metric"] == "mse" and record["drop"] > 0 and not record["passed"] and mse.code == 3, record
    # judged against the float original's output, not the torch model after it took model.onnx's int8 weights (in
    # a quantize-only run the working model is the original itself)
    from compressor.runtime.calls import onnx_predict_outputs, ort_session
    held = load_dataset(HELDOUT, ["x"])
    with torch.no_grad():
        float_emb = model(held.inputs["x"].float())["emb"]
    onnx_emb = onnx_predict_outputs(ort_session(tmp_path / "m" / "model.onnx"), held)[1]
    assert record["max_abs_diff"] == pytest.approx(float((onnx_emb - float_emb).abs().max()), rel=1e-4), record
    # the resolved recipe keeps the output's metric, and running it again judges that output the same way
    resolved = tmp_path / "m" / "recipe.yaml"
    assert yaml.safe_load(resolved.read_text())["output_metrics"] == {"emb": "mse"}
    again = run_cli(tmp_path / "two.pt2", "--pipeline", resolved, "--out", tmp_path / "again", "--quiet")
    assert again.code == 3 and read_report(tmp_path / "again")["artifacts"][0]["outputs"][0] == record, again


class MaskedMean(nn.Module):
    """Token ids and a bool padding mask (masked_fill refuses an integer mask)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.fc = nn.Linear(16, 3)

    def forward(self, input_ids, pad_mask):
        h = self.embed(input_ids).masked_fill(pad_mask.unsqueeze(-1), 0.0)
        return self.fc(h.sum(1) / (~pad_mask).sum(1, keepdim=True).clamp(min=1))


def _mask_data(path, rng, n, as_int=False):
    ids = rng.integers(1, 20, size=(n, 12))
    mask = np.arange(12)[None, :] >= rng.integers(3, 12, size=(n, 1))
    np.savez(path, input_ids=ids, pad_mask=mask.astype(np.int64) if as_int else mask, y=ids[:, 0] % 3)


def test_bool_mask_input_stays_bool_and_integer_zeros_ones_are_cast_to_it(tmp_path):
    torch.manual_seed(0)
    ids, mask = torch.ones(2, 12, dtype=torch.long), torch.zeros(2, 12, dtype=torch.bool)
    _export(MaskedMean().eval(), (ids, mask), tmp_path / "masked.pt2")
    rng = np.random.default_rng(0)
    _mask_data(tmp_path / "held.npz", rng, 200)
    _mask_data(tmp_path / "train.npz", rng, 400, as_int=True)  # 0/1 int64: cast to the program's bool input
    out = tmp_path / "out"
    res = run_cli(tmp_path / "masked.pt2", "--pipeline", "quantize", "--data", tmp_path / "held.npz",
                  "--train-data", tmp_path / "train.npz", "--out", out, "--quiet")
    assert res.code == 0, res
    assert read_report(out)["artifacts"][0]["parity_max_abs_diff_fp32_vs_torch"] < 1e-4
    data = load_dataset(tmp_path / "train.npz", ["input_ids", "pad_mask"], {"pad_mask": torch.bool})
    assert data.inputs["pad_mask"].dtype == torch.bool and data.inputs["input_ids"].dtype == torch.int64
    bad = tmp_path / "bad.npz"
    np.savez(bad, input_ids=np.ones((4, 12), np.int64), pad_mask=np.full((4, 12), 2))
    res = run_cli(tmp_path / "masked.pt2", "--pipeline", "quantize", "--data", bad, "--out", tmp_path / "o2")
    assert res.code == 1 and "other than 0/1" in res.stderr and len(res.stderr.strip().splitlines()) == 1


class GruClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.rnn = nn.GRU(8, 24, batch_first=True)
        self.fc = nn.Linear(24, 3)

    def forward(self, input_ids):
        return self.fc(self.rnn(self.embed(input_ids))[0][:, -1])


def test_prune_warns_when_most_parameters_are_in_a_fused_recurrent_op(tmp_path):
    torch.manual_seed(0)
    _export(GruClassifier().eval(), (torch.ones(2, 12, dtype=torch.long),), tmp_path / "gru.pt2")
    rng = np.random.default_rng(0)
    for name, n in (("held", 120), ("train", 240)):
        ids = rng.integers(1, 20, size=(n, 12))
        np.savez(tmp_path / f"{name}.npz", input_ids=ids, y=ids[:, -1] % 3)
    out = tmp_path / "out"
    res = run_cli(tmp_path / "gru.pt2", "--pipeline", "prune", "--set", "prune.schedule=0.5",
                  "--set", "prune.epochs_per_step=1", "--set", "prune.codebook=off", "--max-drop", "100",
                  "--data", tmp_path / "held.npz", "--train-data", tmp_path / "train.npz", "--out", out)
    assert res.code == 0, res
    notes = read_report(out)["stages"][0]["notes"]
    warning = next(n for n in notes if n.startswith("WARNING: the prunable weights hold"))
    assert "rnn.weight_hh_l0 (1,728, read by no linear/matmul/conv op, e.g. a fused GRU/LSTM)" in warning
    assert "prune.include" in warning
    # the decision line is what prune kept and why it stopped; the warning stays a note, shown under it
    assert read_report(out)["stages"][0]["decision"].startswith("blinded policy on 1 tensor: sparsity 50.00%")
    printed = " ".join(res.stdout.split())
    assert "prune: blinded policy on 1 tensor" in printed and "WARNING: the prunable weights hold" in printed


class ManyOutputs(nn.Module):
    """Logits, boxes, and a tuple holding a second head and a scalar per call (not one value per sample)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 2)

    def forward(self, x):
        return {"logits": self.a(x), "boxes": self.b(x), "extra": (self.a(x) * 2, self.b(x).sum())}


def test_every_other_output_is_named_and_compared_or_listed():
    from compressor.export.torch_onnx import export_onnx_proto
    from compressor.io.data import Dataset
    from compressor.runtime.calls import onnx_predict_outputs, ort_session
    from compressor.verify.outputs import verify_outputs

    torch.manual_seed(0)
    model, data = ManyOutputs().eval(), Dataset({"x": torch.randn(50, 4)}, None, "t")
    session = ort_session(export_onnx_proto(model, data).SerializeToString())
    records = verify_outputs(model, onnx_predict_outputs(session, data)[1:], data, torch.device("cpu"),
                             {"boxes": "mse"}, 1.0)
    assert [r["output"] for r in records] == ["boxes", "extra.0", "extra.1"]
    assert records[0]["metric"] == "mse" and records[0]["reason"] == "--output-metric boxes=mse"
    assert records[1]["drop"] < 1e-3 and records[1]["passed"]
    assert records[2]["metric"] is None and records[2]["passed"] and "not one value per sample" in records[2]["reason"]


class LstmClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm, self.head = nn.LSTM(8, 32, batch_first=True), nn.Linear(32, 4)

    def forward(self, x):
        return self.head(self.lstm(x)[0][:, -1])


@pytest.mark.parametrize("mode, lstm_reason", [
    ("static", "2 kept float in model.onnx (read by LSTM): lstm.weight_ih_l0, lstm.weight_hh_l0"),
    ("dynamic", "2 quantized in a layout of its own in model.onnx (read by DynamicQuantizeLSTM): lstm.weight_ih_l0"),
])
def test_the_note_on_weights_that_stay_float_gives_the_graphs_reason(tmp_path, mode, lstm_reason):
    """An LSTM's weights are no conv + batch norm: static QDQ leaves the LSTM float (its gates reordered), dynamic
    int8 holds them in DynamicQuantizeLSTM's own layout, and its two biases are merged into one tensor."""
    torch.manual_seed(0)
    model = LstmClassifier().eval()
    _export(model, (torch.randn(4, 12, 8),), tmp_path / "lstm.pt2")
    g = torch.Generator().manual_seed(1)
    for name, n in (("held", 128), ("val", 128)):
        x = torch.randn(n, 12, 8, generator=g)
        np.savez(tmp_path / f"{name}.npz", x=x.numpy(), y=model(x).argmax(1).numpy())
    out = tmp_path / "out"
    res = run_cli(tmp_path / "lstm.pt2", "--pipeline", "quantize", "--set", f"quantize.mode={mode}",
                  "--set", "quantize.objective=size", "--data", tmp_path / "held.npz", "--val-data",
                  tmp_path / "val.npz", "--calib-data", tmp_path / "val.npz", "--max-drop", "100", "--out", out, "-q")
    assert res.code == 0, res
    note = next(n for n in read_report(out)["notes"] + read_report(out)["stages"][0]["notes"] if "not int8 in model.onnx" in n)
    assert lstm_reason in note
    assert "2 held by no initializer of model.onnx (folded or merged" in note and "lstm.bias_ih_l0" in note
