"""basis (Queiruga et al., docs/ALGORITHMS.md §4): exact projections, stack detection, the compressed stack, artifacts."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from safetensors import safe_open
from torch import nn

import compressor
from compressor.algorithms.basis.functions import Basis, projection_matrix
from compressor.algorithms.basis.hierarchy import example_inputs, hierarchical_model
from compressor.algorithms.basis.stacks import detect_stacks
from compressor.algorithms.basis.stage import project_stack
from compressor.export.torch_onnx import export_onnx_proto
from compressor.io.data import load_dataset
from compressor.runtime.calls import onnx_predict, ort_session, predict
from tests.conftest import HELDOUT, SAMPLES, TRAIN, read_report, run_cli

RNG = np.random.default_rng(0)


def _project(src: Basis, dst: Basis, coef: np.ndarray) -> np.ndarray:
    return projection_matrix(src, dst) @ coef


# ---- exactness ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 3, 8, 16])
def test_piecewise_constant_k_to_k_is_identity(k):
    theta = RNG.normal(size=(k, 5))
    assert np.abs(_project(Basis("piecewise_constant", k), Basis("piecewise_constant", k), theta) - theta).max() < 1e-6


def test_piecewise_constant_16_to_8_is_mean_of_adjacent_pairs():
    theta = RNG.normal(size=(16, 7))
    out = _project(Basis("piecewise_constant", 16), Basis("piecewise_constant", 8), theta)
    assert np.abs(out - 0.5 * (theta[0::2] + theta[1::2])).max() < 1e-6


def test_nested_spaces_return_unchanged():
    # piecewise constant: a function already in the 8-space, written in the 16-space
    c8 = RNG.normal(size=(8, 3))
    assert np.abs(_project(Basis("pc", 16), Basis("pc", 8), np.repeat(c8, 2, axis=0)) - c8).max() < 1e-6
    # hats: 5 nodes -> the same function sampled on 9 nodes (midpoints interpolated) -> back to 5 nodes
    c5 = RNG.normal(size=(5, 3))
    c9 = np.zeros((9, 3))
    c9[0::2] = c5
    c9[1::2] = 0.5 * (c5[:-1] + c5[1:])
    assert np.abs(_project(Basis("hat", 9), Basis("hat", 5), c9) - c5).max() < 1e-6
    # Legendre degree d -> d' >= d: coefficients padded with zeros
    for d, d2 in ((3, 3), (3, 6), (1, 4)):
        c = RNG.normal(size=(d, 2))
        expect = np.vstack([c, np.zeros((d2 - d, 2))])
        assert np.abs(_project(Basis("legendre", d), Basis("legendre", d2), c) - expect).max() < 1e-6
    # discontinuous linear contains the continuous hats on the same cells
    assert np.abs(_project(Basis("hat", 5), Basis("dpl", 8), c5)[[0, 2, 4, 6]] - c5[:4]).max() < 1e-6


def test_aligned_quadrature_is_exact_where_straddling_cells_are_not():
    """Projecting a jumpy function: aligned cells give the exact pair-mean; straddling cells would not."""
    theta = np.arange(16.0)[:, None]
    out = _project(Basis("pc", 16), Basis("pc", 5), theta)
    # exact: integral over [b/5, (b+1)/5) of the step function, times 5
    edges = np.linspace(0, 1, 6)
    expect = [5 * sum(max(0, min(e1, (a + 1) / 16) - max(e0, a / 16)) * a for a in range(16))
              for e0, e1 in zip(edges[:-1], edges[1:])]
    assert np.abs(out[:, 0] - expect).max() < 1e-9


# ---- stack detection ---------------------------------------------------------------------------------------------

def _resnet():
    from sample_models.digits_models import resnet

    m = resnet()
    m.load_state_dict(torch.load(SAMPLES / "digits_resnet.pt"))
    return m.eval()


def test_stacks_on_sample_resnet_eager_and_pt2_agree():
    x = load_dataset(HELDOUT, ["x"]).example().inputs["x"]
    eager = [(s.parent, s.blocks) for s in detect_stacks(_resnet(), (x,))]
    assert eager == [("stage1", ["0", "1", "2", "3"]), ("stage2", ["1", "2", "3", "4"])]
    flat = torch.export.load(str(SAMPLES / "digits_resnet.pt2")).module()
    um = hierarchical_model(flat, (x,), ["x"])
    assert [(s.parent, s.blocks) for s in detect_stacks(um, (x,))] == eager


class BertLayer(nn.Module):
    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln1, self.ff1, self.ff2, self.ln2 = nn.LayerNorm(d), nn.Linear(d, 32), nn.Linear(32, d), nn.LayerNorm(d)

    def forward(self, h, mask):
        a = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2) / 4.0 + mask, -1) @ self.v(h)
        h = self.ln1(h + self.o(a))
        return self.ln2(h + self.ff2(torch.relu(self.ff1(h))))


class TinyBert(nn.Module):
    def __init__(self, layers: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(30, 16)
        self.layers = nn.ModuleList([BertLayer() for _ in range(layers)])
        self.extra = BertLayer()  # same tensors, but applied to the embedding, not chained: not in the stack
        self.head = nn.Linear(16, 3)

    def forward(self, ids):
        e = self.emb(ids)
        mask = torch.zeros(ids.shape[0], 1, ids.shape[1])
        h = e
        for layer in self.layers:
            h = layer(h, mask)
        return self.head(h[:, 0] + self.extra(e, mask)[:, 0])


def test_stacks_on_transformer_encoder_and_handwritten_bert():
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 3, enable_nested_tensor=False)
    enc.eval()
    x = torch.randn(2, 5, 16)
    stacks = detect_stacks(enc, (x,))
    assert [(s.parent, s.blocks) for s in stacks] == [("layers", ["0", "1", "2"])]
    bert = TinyBert().eval()
    ids = torch.randint(0, 30, (2, 6))
    assert [(s.parent, s.blocks) for s in detect_stacks(bert, (ids,))] == [("layers", ["0", "1", "2", "3"])]
    # compressed stacks run through functional_call whatever the block class; K = depth is exact
    for model, inp in ((enc, x), (bert, ids)):
        ref = model(inp)
        for s in detect_stacks(model, (inp,)):
            project_stack(model, s, Basis("pc", s.depth), s.depth)
        assert (model(inp) - ref).abs().max() < 1e-5


def test_not_chained_same_shaped_siblings_are_not_a_stack():
    class Fork(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.a(x) + self.b(x)

    assert detect_stacks(Fork(), (torch.randn(2, 4),)) == []


# ---- compressed stack, ONNX, reload ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,k,n", [("legendre", 3, 4)])
def test_onnx_forms_weights_in_graph_and_matches_torch(kind, k, n):
    from compressor.algorithms.basis.onnx_graph import (
        make_int8_rewrite,
        make_onnx_rewrite,
    )

    held = load_dataset(HELDOUT, ["x"])
    model = _resnet()
    mods = [(s.paths[0], project_stack(model, s, Basis(kind, k), n)) for s in detect_stacks(model, (held.example().inputs["x"],))]
    proto = make_onnx_rewrite(mods)(export_onnx_proto(model, held.example()))
    inits = {i.name: list(i.dims) for i in proto.graph.initializer}
    assert inits["stage1.0.coef"][0] == k and inits["stage2.1.coef"][0] == k
    assert sum("weighted_sum" in node.name for node in proto.graph.node) == 2
    ref = predict(model, held)
    diff = (onnx_predict(ort_session(proto.SerializeToString()), held) - ref).abs().max()
    scale = max(1.0, float(ref.abs().max()))  # a non-smooth ResNet projected: logits can be large
    assert diff < 1e-5 * scale, (diff, scale)
    q = make_int8_rewrite(mods)(proto)
    onnx.checker.check_model(q, full_check=True)
    assert any(i.data_type == onnx.TensorProto.INT8 for i in q.graph.initializer)
    qd = (onnx_predict(ort_session(q.SerializeToString()), held) - ref).abs().max()
    assert qd < 0.1 * scale, (qd, scale)


def test_odenet_cli_basis_quantize_shrinks_stack_costs_little_and_reloads(tmp_path):
    out = tmp_path / "out"
    res = run_cli(SAMPLES / "digits_odenet.pt2", "--pipeline", "basis,quantize", "--data", HELDOUT,
                  "--train-data", TRAIN, "--out", out, "--set", "quantize.objective=size")
    assert res.code == 0, res
    report = read_report(out)
    basis = report["stages"][0]
    assert basis["name"] == "basis"
    assert report["baseline"]["value"] >= 95.0
    # no data used: at most two of the 360 held-out samples
    assert report["baseline"]["value"] - basis["metric_value"] <= 100 * 2 / 360 + 1e-6
    # half the functions (K=8) first; at the whole search's confidence on the 99-sample split K=12 holds
    assert basis["stack_params_after"] * 4 <= basis["stack_params_before"] * 3
    assert "val_after_projection" in basis and basis["dof"] < report["baseline"]["params"]
    fp32 = report["artifacts"][0]
    assert fp32["parity_max_abs_diff_fp32_vs_torch"] < 1e-4
    assert fp32["fp32_export_bytes"] < 0.65 * (SAMPLES / "digits_odenet.pt2").stat().st_size
    proto = onnx.load(str(out / "model.onnx"))
    assert any(i.data_type == onnx.TensorProto.INT8 and i.name.startswith("basis/") for i in proto.graph.initializer)
    assert any(n.op_type == "Cast" and n.name.startswith("basis/") for n in proto.graph.node)
    # model.safetensors holds the coefficients only; compressor.load restores the compressed form exactly
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as fh:
        keys = list(fh.keys())
    assert any(k.endswith("blocks.0.coef") for k in keys) and not any(k.startswith("blocks.1.") for k in keys)
    assert report["artifacts"][1]["reload_max_abs_diff_vs_torch"] == 0.0
    held = load_dataset(HELDOUT, ["x"])
    again = compressor.load(out)
    assert (predict(again, held) - predict(compressor.load(out), held)).abs().max() == 0.0


@pytest.mark.parametrize("kind, starts, depths, expected", [
    ("piecewise_constant", [3], [6], [[3], [5], [None]]),          # MiniLM's 6 layers: 3, then 5, then as it was
    ("piecewise_constant", [2, 8], [4, 16], [[2, 8], [3, 12], [None, None]]),
    ("discontinuous_linear", [2], [8], [[2], [4], [6], [None]]),   # its functions come in pairs
    ("legendre", [4], [4], [[4], [None]]),                          # an explicit K = depth is tried first
])
def test_size_schedule_grows_to_the_depth_then_leaves_the_stack(kind, starts, depths, expected):
    from compressor.algorithms.basis.search import size_schedule

    assert size_schedule(kind, starts, depths, True, 1.5) == expected
    assert size_schedule(kind, starts, depths, False, 1.5) == [starts]


def test_resnet_basis_over_budget_grows_k_and_keeps_the_input_when_nothing_fits(tmp_path):
    """A plain ResNet is not smooth in depth (ALGORITHMS §4): K = 2 and K = 3 of 4 blocks stay over basis's share of
    the budget even fine-tuned, so the stage keeps its input (exit 0, warned) instead of failing the gate."""
    out = tmp_path / "out"
    res = run_cli(SAMPLES / "digits_resnet.pt2", "--pipeline", "basis", "--data", HELDOUT, "--train-data", TRAIN,
                  "--out", out)
    assert res.code == 0, res
    basis = read_report(out)["stages"][0]
    tried = basis["sizes_tried"]
    assert [t["K"] for t in tried] == [[2, 2], [3, 3], [None, None]]
    assert all(t["finetuned"] and t["accepted"] is False and t["bound"] > 1.0 for t in tried[:2])
    assert tried[1]["val_after_finetune"] > tried[0]["val_after_finetune"]  # more functions, closer to the blocks
    assert basis["stacks"] == [] and basis["K"] == [None, None]
    assert any("basis saves nothing" in n for n in basis["notes"])
    assert basis["metric_value"] == read_report(out)["baseline"]["value"]


def test_eager_state_dict_round_trip_and_n_steps(tmp_path):
    from sample_models.odenet import odenet

    out = tmp_path / "out"
    res = run_cli(SAMPLES / "digits_odenet.pt", "--arch", "sample_models.odenet:odenet", "--pipeline", "basis",
                  "--set", "basis.basis=piecewise_linear", "--set", "basis.size=5", "--set", "basis.n_steps=10", "--set", "basis.grow=false",
                  "--data", HELDOUT, "--train-data", TRAIN, "--out", out, cwd=SAMPLES.parent)
    assert res.code in (0, 3), res
    report = read_report(out)
    assert report["artifacts"][1]["reload_max_abs_diff_vs_torch"] == 0.0
    model = compressor.load(out, model=odenet())
    assert model.blocks[0].basis.size == 5 and model.blocks[0].n_steps == 10
    # an eager model carries no example input: without a data file basis could trace, refused before any work
    res = run_cli(SAMPLES / "digits_odenet.pt", "--arch", "sample_models.odenet:odenet", "--pipeline", "basis",
                  "--data", HELDOUT, "--out", tmp_path / "none", cwd=SAMPLES.parent)
    assert res.code == 2 and "only a .pt2 program carries" in res.stderr and not (tmp_path / "none").exists(), res


# ---- .pt2 transformers: the chained hidden state is not the first argument ---------------------------------------

TEXT_HELDOUT = SAMPLES / "text_heldout.npz"


@pytest.mark.parametrize("name", ["text_classifier", "text_embedder"])
def test_pt2_transformer_stack_found_with_its_hidden_state_argument(name):
    """An unflattened `.pt2` BERT layer receives a symbolic size and the attention bias before the hidden state:
    the stack is found by the argument that chains layer i's output into layer i+1, and compressed stacks run
    with it (K = depth is the original stack exactly)."""
    held = load_dataset(TEXT_HELDOUT, ["input_ids", "attention_mask"])
    flat = torch.export.load(str(SAMPLES / f"{name}.pt2")).module()
    args, kwargs = example_inputs(flat, held, None)
    assert not args and list(kwargs) == ["input_ids", "attention_mask"]  # exported with keyword inputs
    model = hierarchical_model(flat, args, None, kwargs)
    seen = []
    hook = model.get_submodule("encoder.layers.1").register_forward_pre_hook(lambda m, a: seen.append(a))
    ref = model(**kwargs)
    hook.remove()
    stacks = detect_stacks(model, args, kwargs)
    assert [(s.parent, s.blocks) for s in stacks] == [("encoder.layers", ["0", "1", "2", "3"])]
    hidden = stacks[0].hidden_arg
    assert hidden > 0 and tuple(seen[0][hidden].shape) == (2, 32, 64)  # not args[0]
    project_stack(model, stacks[0], Basis("piecewise_constant", 4), 4)
    assert (model(**kwargs) - ref).abs().max() < 1e-5


def test_pt2_text_classifier_basis_cli_records_the_hidden_argument_and_reloads(tmp_path):
    out = tmp_path / "out"
    res = run_cli(SAMPLES / "text_classifier.pt2", "--pipeline", "basis", "--data", TEXT_HELDOUT,
                  "--train-data", SAMPLES / "text_train.npz", "--val-data", SAMPLES / "text_val.npz", "--out", out,
                  "--set", "basis.size=4", "--quiet")  # K = depth: exact, so the gate must pass
    assert res.code == 0, res
    report = read_report(out)
    assert report["stages"][0]["stacks"] == ["encoder.layers.0"]
    assert report["artifacts"][0]["parity_max_abs_diff_fp32_vs_torch"] < 1e-4
    assert report["artifacts"][1]["reload_max_abs_diff_vs_torch"] == 0.0
    with safe_open(str(out / "model.safetensors"), "pt") as fh:
        meta = json.loads(fh.metadata()["compressor"])
    record = next(s for s in meta["structures"] if s["kind"] == "basis")
    assert record["keywords"] and record["stacks"][0]["hidden_arg"] > 0
    held = load_dataset(TEXT_HELDOUT, ["input_ids", "attention_mask"]).subset(torch.arange(64))
    model = compressor.load(out)
    assert model.get_submodule("encoder.layers.0").hidden_arg == record["stacks"][0]["hidden_arg"]
    original = torch.export.load(str(SAMPLES / "text_classifier.pt2")).module()
    assert (predict(model, held) - predict(original, held)).abs().max() < 1e-4
