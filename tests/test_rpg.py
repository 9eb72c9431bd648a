"""rpg (Wang et al., WACV 2023): index map, closed-form projection, ring-only ONNX, checked reload, CLI runs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import compressor
from compressor.algorithms.rpg.fit import ring_schedule
from compressor.algorithms.rpg.onnx_graph import generate_index_map_in_graph, index_map_nodes, ring_to_int8
from compressor.algorithms.rpg.ring import (
    RingLayer,
    RingLayout,
    affine_map_params,
    hashed_signs,
    index_map,
    project,
    ring_model,
    scale_vector,
    slot_indices,
)
from compressor.algorithms.rpg.ring_int8 import RING_INT8_BLOCK, dequantize_ring, quantize_ring
from compressor.algorithms.rpg.stage import DEFAULT_RING_FRACTION, RpgConfig, ring_size_for
from compressor.errors import ArtifactError
from compressor.export.torch_onnx import export_onnx_proto
from compressor.io.data import load_dataset
from compressor.io.onnx_files import save_onnx
from compressor.io.safetensors_io import header_sha256
from compressor.runtime.calls import ort_session, predict
from tests.conftest import HELDOUT, ROOT, SAMPLES, TRAIN, read_report, run_cli

# a barely trained ring (fixed size: these tests check the artifact, not the ring-size decision)
FAST = ("--set", "rpg.epochs=1", "--set", "rpg.max_steps_per_epoch=4", "--set", "rpg.verify_onnx=false",
        "--set", "rpg.grow=false")


def small_layout(n: int, seed: int = 3, shapes=((6, 4), (5, 3, 2))) -> RingLayout:
    layers, offset = [], 0
    for i, shape in enumerate(shapes):
        layers.append(RingLayer(f"w{i}", tuple(shape), offset, 0.5 + i))
        offset += int(np.prod(shape))
    a, b = affine_map_params(seed, n)
    return RingLayout(n, seed, a, b, layers)


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc1 = nn.Linear(6 * 8 * 8, 20)
        self.fc2 = nn.Linear(20, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


def tiny_ring(seed: int = 0, n: int = 97, mask: torch.Tensor | None = None, ring: torch.Tensor | None = None):
    torch.manual_seed(0)
    net = TinyNet().eval()
    names = ["conv2.weight", "fc1.weight"]
    params = dict(net.named_parameters())
    layers, offset = [], 0
    for name in names:
        layers.append(RingLayer(name, tuple(params[name].shape), offset, float(params[name].detach().std())))
        offset += params[name].numel()
    layout = RingLayout(n, seed, *affine_map_params(seed, n), layers)
    if ring is None:
        ring = project([params[nm] for nm in names], layout, mask)
    return ring_model(net, layout, ring, mask), layout


# ---- the index map ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("total,n,seed", [(1000, 7, 0), (1000, 1000, 1), (53760, 8645, 5), (12345, 4096, 2), (5, 1, 0)])
def test_slot_usage_counts_are_floor_or_ceil(total, n, seed):
    a, b = affine_map_params(seed, n)
    assert np.gcd(a, n) == 1
    counts = torch.bincount(slot_indices(torch.arange(total), a, b, n), minlength=n)
    assert set(counts.tolist()) <= {total // n, -(-total // n)}
    assert int((counts == -(-total // n)).sum()) == (total % n or n)


def _fmix32(h: int) -> int:
    """murmur3's finaliser in plain Python integers (the reference)."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def test_hashed_sign_matches_the_formula_without_int64_overflow():
    ks = [0, 1, 2, 12345, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**33 + 17, 2**40 + 3, 2**50 + 5]
    ks += torch.randint(0, 2**62, (200,), generator=torch.Generator().manual_seed(0)).tolist()
    want = [1 - 2 * (_fmix32(k % 2**32) >> 31) for k in ks]
    assert hashed_signs(torch.tensor(ks)).tolist() == want
    signs = hashed_signs(torch.arange(100_000))
    assert abs(float(signs.mean())) < 0.02  # balanced


def _max_lag_correlation(signs: torch.Tensor, lo: int, hi: int) -> float:
    """max |mean(s_k s_{k+L})| over lags L in [lo, hi], all lags at once by an FFT autocorrelation."""
    n = signs.numel()
    f = torch.fft.rfft(signs.double(), 2 * n)
    acf = torch.fft.irfft(f * f.conj(), 2 * n)[:n]
    lags = torch.arange(lo, hi + 1)
    return float((acf[lags] / (n - lags)).abs().max())


def test_sign_hash_is_uncorrelated_at_every_ring_lag():
    """Weights sharing a slot are N apart: their signs must be uncorrelated for every ring size N (the paper's
    i.i.d. flips). The golden-ratio hash this replaced fails the same check (correlation ~1 at some lags)."""
    k = torch.arange(1 << 21) + RingLayout(10, 7, 1, 0).sign_offset
    assert _max_lag_correlation(hashed_signs(k), 1_000, 100_000) < 0.05
    golden = (1 - 2 * (((k % 2**32) * 2654435761 % 2**32) // 2**31)).float()
    assert _max_lag_correlation(golden, 1_000, 100_000) > 0.5


def test_closed_form_projection_equals_least_squares():
    layout = small_layout(n=7)
    w = torch.randn(layout.total, generator=torch.Generator().manual_seed(1))
    slots, signs = index_map(layout)
    design = torch.zeros(layout.total, layout.n, dtype=torch.float64)
    design[torch.arange(layout.total), slots] = (signs * scale_vector(layout)).double()
    expected = torch.linalg.lstsq(design, w.double().unsqueeze(1)).solution.squeeze(1)
    weights = [w[:24].reshape(6, 4), w[24:].reshape(5, 3, 2)]
    assert torch.allclose(project(weights, layout), expected.float(), atol=1e-6)
    # with a prune mask the pruned weights leave the fit (zero rows)
    keep = torch.rand(layout.total, generator=torch.Generator().manual_seed(2)) > 0.3
    masked = torch.linalg.lstsq(design * keep.unsqueeze(1), (w * keep).double().unsqueeze(1)).solution.squeeze(1)
    assert torch.allclose(project(weights, layout, keep), masked.float(), atol=1e-6)


def test_onnx_index_map_nodes_equal_torch():
    layout = small_layout(n=1009, shapes=((300, 70),))
    graph = helper.make_graph([], "index_map", [], [
        helper.make_tensor_value_info("slots", TensorProto.INT64, [layout.index_length]),
        helper.make_tensor_value_info("signs", TensorProto.FLOAT, [layout.index_length])])
    graph.node.extend(index_map_nodes(graph, layout, "slots", "signs"))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    onnx.checker.check_model(proto, full_check=True)
    slots, signs = ort_session(proto.SerializeToString()).run(None, {})
    want_slots, want_signs = index_map(layout, layout.index_length)
    assert np.array_equal(slots, want_slots.numpy()) and np.array_equal(signs, want_signs.numpy())


def test_int8_ring_rows_dequantize_identically_in_onnx_runtime_and_beat_one_scale():
    gen = torch.Generator().manual_seed(4)
    ring = torch.randn(1000, generator=gen)
    ring[[5, 700]] = torch.tensor([40.0, -25.0])  # two outliers: one scale would coarsen every slot
    graph = helper.make_graph([helper.make_node("Identity", ["rpg_ring"], ["out"])], "ring", [],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1000])],
                              [onnx.numpy_helper.from_array(ring.numpy(), "rpg_ring")])
    proto = ring_to_int8(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]))
    onnx.checker.check_model(proto, full_check=True)
    out = ort_session(proto.SerializeToString()).run(None, {})[0]
    q, scales = quantize_ring(ring.numpy())
    assert q.dtype == np.int8 and q.shape == (-(-1000 // RING_INT8_BLOCK), RING_INT8_BLOCK)
    deq = dequantize_ring(torch.from_numpy(q), torch.from_numpy(scales), 1000)
    assert np.array_equal(out, deq.numpy())
    one_scale = torch.round(ring / (ring.abs().max() / 127)) * (ring.abs().max() / 127)
    assert (deq - ring).abs().mean() < 0.5 * (one_scale - ring).abs().mean()


def test_layout_without_the_sign_hash_version_is_refused():
    entry = small_layout(n=7).as_dict()
    assert entry["sign_hash"] == "fmix32"
    RingLayout.from_dict(entry)
    entry.pop("sign_hash")
    with pytest.raises(ArtifactError, match="golden-ratio multiplicative sign hash"):
        RingLayout.from_dict(entry)


# ---- the ring module and its ONNX graph ------------------------------------------------------------------------

def test_regeneration_identical_in_torch_and_onnx_runtime(tmp_path):
    keep = torch.rand(6 * 4 * 9 + 20 * 384, generator=torch.Generator().manual_seed(3)) > 0.4
    for mask in (None, keep):
        model, layout = tiny_ring(mask=mask)
        assert not any(n in dict(model.named_parameters()) for n in ("conv2.weight", "fc1.weight"))
        x = torch.randn(5, 1, 8, 8)
        data = load_dataset(HELDOUT, ["x"])
        proto = generate_index_map_in_graph(export_onnx_proto(model, data.example()), layout)
        inits = {i.name: int(np.prod(i.dims)) for i in proto.graph.initializer}
        assert "rpg_slots" not in inits and "rpg_signs" not in inits and "rpg_mask" not in inits
        assert inits["rpg_ring"] == 97
        assert all(v <= layout.index_length / 8 for v in inits.values()), "a T-sized tensor is stored"
        path = tmp_path / f"tiny{mask is None}.onnx"
        save_onnx(proto, path)
        out = ort_session(path).run(None, {"x": x.numpy()})[0]
        with torch.no_grad():
            ref = model(x).numpy()
        assert np.abs(out - ref).max() < 1e-5
        if mask is not None:
            flat = torch.cat([w.reshape(-1) for w in model.generate().values()])
            assert torch.all(flat[~keep] == 0), "pruned weights must stay zero after generation"


def test_regeneration_deterministic_for_a_seed_and_different_for_another():
    a1, _ = tiny_ring(seed=1)
    a2, _ = tiny_ring(seed=1, ring=a1.rpg_ring)
    b, _ = tiny_ring(seed=2, ring=a1.rpg_ring)  # the same ring read through another seed's index map
    for name, w in a1.generate().items():
        assert torch.equal(w, a2.generate()[name])
        assert not torch.equal(w, b.generate()[name])
    assert a1.checksum() == a2.checksum() != b.checksum()


def test_dof_counts_the_ring_once():
    model, layout = tiny_ring(n=97)
    ordinary = sum(p.numel() for n, p in TinyNet().named_parameters() if n not in ("conv2.weight", "fc1.weight"))
    assert sum(p.numel() for p in model.parameters()) == 97 + ordinary
    assert [n for n, _ in model.named_parameters()].count("rpg_ring") == 1
    assert "rpg_ring" in model.state_dict() and "fc1.weight" not in model.state_dict()


# ---- end to end ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cnn_rpg(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rpg") / "out"
    res = run_cli(SAMPLES / "digits_cnn.pt2", "--pipeline", "rpg,quantize", "--data", HELDOUT, "--train-data", TRAIN,
                  "--out", out, "--quiet", "--max-drop", "100", "--set", "rpg.epochs=2", "--set", "rpg.verify_onnx=true",
                  "--set", "rpg.grow=false",  # the default ring fraction, whatever its bound
                  "--set", "quantize.objective=size")
    assert res.code == 0, res
    return out


def check_artifact(out: Path) -> dict:
    report = read_report(out)
    stage = report["stages"][0]
    assert stage["name"] == "rpg" and report["stages"][1]["name"] == "quantize"
    n = stage["ring_size"]
    assert stage["dof"] == n + report["baseline"]["params"] - stage["generated_weights"]  # ring counted once
    assert stage["params"] == stage["dof"] and n == round(DEFAULT_RING_FRACTION * stage["generated_weights"])
    assert "projection_val_metric" in stage
    bound = 1.1 * 4 * stage["dof"] + 16 * 1024
    onnx_art, st_art = report["artifacts"]
    assert onnx_art["fp32_export_bytes"] <= bound and onnx_art["bytes"] <= bound
    assert onnx_art["parity_max_abs_diff_fp32_vs_torch"] < 1e-4
    assert st_art["reload_max_abs_diff_vs_torch"] == 0.0
    tensors = load_file(str(out / "model.safetensors"))
    assert tensors["rpg_ring::q"].numel() == n  # the ring as the int8 graph holds it (encoding int8)
    assert not set(stage["generated_layers"]) & set(tensors), "generated weights were stored"
    proto = onnx.load(str(out / "model.onnx"))
    ring8 = [i for i in proto.graph.initializer if i.name == "rpg_ring_int8"]
    assert ring8 and ring8[0].data_type == TensorProto.INT8
    assert list(ring8[0].dims) == [-(-n // RING_INT8_BLOCK), RING_INT8_BLOCK]  # one scale per row of slots
    scales = [i for i in proto.graph.initializer if i.name == "rpg_gen/dequantize_ring/scale"]
    assert list(scales[0].dims) == [-(-n // RING_INT8_BLOCK), 1]
    # dequantized by Cast + Mul, which ONNX Runtime folds once per session (never DequantizeLinear, which it keeps)
    assert any(node.op_type == "Cast" and node.input[0] == "rpg_ring_int8" for node in proto.graph.node)
    assert not any(node.op_type == "DequantizeLinear" and node.input[0] == "rpg_ring_int8" for node in proto.graph.node)
    assert not any(node.op_type == "BatchNormalization" for node in proto.graph.node), "batch norm left unfolded"
    model = compressor.load(out, trust_code=True)  # an --arch run of our own: opting in to import it
    assert sum(p.numel() for p in model.parameters()) == stage["dof"]
    return report


def test_cli_pt2_rpg_quantize_artifact(cnn_rpg):
    report = check_artifact(cnn_rpg)
    stage = report["stages"][0]
    assert stage["onnx_max_abs_diff"] < 1e-4 and stage["onnx_fp32_bytes"] <= stage["onnx_size_bound"]
    assert any("batch-norm" in note for note in stage["notes"])


def test_cli_eager_state_dict_rpg_quantize(tmp_path):
    out = tmp_path / "eager"
    res = run_cli(SAMPLES / "digits_cnn.pt", "--arch", "sample_models.digits_models:cnn", "--pipeline", "rpg,quantize",
                  "--data", HELDOUT, "--train-data", TRAIN, "--out", out, "--quiet", "--max-drop", "100", *FAST,
                  "--set", "quantize.objective=size", cwd=ROOT)
    assert res.code == 0, res
    check_artifact(out)


def _rewrite_meta(src: Path, dst: Path, edit) -> Path:
    with safe_open(str(src / "model.safetensors"), framework="pt") as fh:
        meta = json.loads(fh.metadata()["compressor"])
    edit(next(s for s in meta["structures"] if s["kind"] == "rpg"))
    meta["checksums"]["header"] = header_sha256(meta)  # re-signed, as a crafted file would: the ring's own checks
    dst.mkdir()
    save_file(load_file(str(src / "model.safetensors")), str(dst / "model.safetensors"),
              metadata={"compressor": json.dumps(meta)})
    return dst


def _reseed(entry):
    entry["seed"] += 1
    entry["a"], entry["b"] = affine_map_params(entry["seed"], entry["N"])
    entry.pop("sign_offset", None)  # a consistent re-seed: only the checksum can tell


@pytest.mark.parametrize("what,edit,message", [
    ("seed", lambda e: e.update(seed=e["seed"] + 1), "does not follow from seed"),
    ("sign offset", lambda e: e.update(sign_offset=e["sign_offset"] + 1), "sign offset"),
    ("seed and map", _reseed, "do not match the saved checksum"),
    ("scale", lambda e: e["layout"][1].update(scale=e["layout"][1]["scale"] * 1.01), "do not match the saved checksum"),
    ("offset", lambda e: e["layout"][1].update(offset=e["layout"][1]["offset"] + 1), "tampered"),
    ("shape", lambda e: e["layout"][0].update(shape=[16, 32, 3, 3]), "shape"),
])
def test_tampered_layout_or_seed_is_refused(cnn_rpg, tmp_path, what, edit, message):
    bad = _rewrite_meta(cnn_rpg, tmp_path / "bad", edit)
    with pytest.raises(ArtifactError, match=message) as err:
        compressor.load(bad)
    assert "\n" not in str(err.value)


class DepthwiseNet(nn.Module):
    """A small depthwise-separable CNN: its ordinary parameters (stem, biases, classifier) are over 20% of it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.dw1, self.pw1 = nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Conv2d(16, 32, 1)
        self.dw2, self.pw2 = nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.Conv2d(32, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.pw1(torch.relu(self.dw1(x))))
        x = torch.relu(self.pw2(torch.relu(self.dw2(x))))
        return self.fc(x.mean(dim=(2, 3)))


def depthwise_cnn() -> nn.Module:
    return DepthwiseNet()


def test_default_ring_size_is_accepted_on_a_small_depthwise_cnn(tmp_path):
    torch.manual_seed(0)
    net = depthwise_cnn()
    train = np.load(TRAIN)
    x, y = torch.from_numpy(train["x"]), torch.from_numpy(train["y"])
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for step in range(60):  # briefly trained: the ring projects real weights
        idx = torch.randint(0, len(x), (64,), generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()
    torch.save(net.state_dict(), tmp_path / "dw.pt")
    generated = sum(getattr(net, n).weight.numel() for n in ("dw1", "pw1", "dw2", "pw2"))
    total = sum(p.numel() for p in net.parameters())
    assert (total - generated) / total > 0.2  # a DoF-fraction default of 0.18 had no room left here
    with pytest.raises(Exception, match="leaves no room"):
        ring_size_for(RpgConfig(dof_fraction=0.18), total, generated)
    res = run_cli(tmp_path / "dw.pt", "--arch", "tests.test_rpg:depthwise_cnn", "--pipeline", "rpg", "--data", HELDOUT,
                  "--train-data", TRAIN, "--out", tmp_path / "out", "--quiet", "--max-drop", "100", *FAST, cwd=ROOT)
    assert res.code == 0, res
    stage = read_report(tmp_path / "out")["stages"][0]
    assert stage["generated_weights"] == generated
    assert stage["ring_size"] == ring_size_for(RpgConfig(), total, generated)
    assert stage["ring_size"] == round(DEFAULT_RING_FRACTION * generated)


def test_ring_too_small_is_a_one_line_error(tmp_path):
    res = run_cli(SAMPLES / "digits_cnn.pt2", "--pipeline", "rpg", "--data", HELDOUT, "--train-data", TRAIN,
                  "--out", tmp_path / "x", "--set", "rpg.dof_fraction=0.01")
    assert res.code == 1 and "dof_fraction" in res.stderr and "Traceback" not in res.stderr, res


def test_rpg_on_a_positional_pt2_sequential_exports_and_reloads(tmp_path):
    """An nn.Sequential exported as .pt2 takes its input positionally (`input`): the ring wrapper must not hand it
    keywords when torch.export binds the wrapper's signature (an unseen tabular model failed ONNX export so)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)).eval()
    x = torch.randn(64, 8)
    torch.export.save(torch.export.export(model, (x[:4],), dynamic_shapes=({0: torch.export.Dim("b")},)),
                      tmp_path / "seq.pt2")
    y = model(x).argmax(1)
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=y.numpy())
    out = tmp_path / "out"
    res = run_cli(tmp_path / "seq.pt2", "--pipeline", "rpg", "--set", "rpg.epochs=1", "--data", tmp_path / "d.npz",
                  "--train-data", tmp_path / "d.npz", "--out", out, "--max-drop", "100")
    assert res.code == 0, res
    data = load_dataset(tmp_path / "d.npz", ["input"])
    session = ort_session(out / "model.onnx")
    onnx_out = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    assert torch.allclose(predict(compressor.load(out), data), onnx_out, atol=1e-4)
    compressor.load(out).eval()  # a user's first call: the .pt2 underneath refuses train/eval, the ring does not


# ---- ring size against the budget --------------------------------------------------------------------------------

def test_ring_schedule_grows_geometrically_below_the_generated_weights():
    assert ring_schedule(1000, 5000, True, 2.0) == [1000, 2000, 4000]  # a ring of all 5000 would save nothing
    assert ring_schedule(1000, 5000, True, 1.5) == [1000, 1500, 2250, 3375]
    assert ring_schedule(1, 3, True, 1.01) == [1, 2]  # always at least one slot more
    assert ring_schedule(1000, 5000, False, 2.0) == [1000]
    assert ring_schedule(5000, 5000, True, 2.0) == [5000]  # the user's own choice


GROW = (SAMPLES / "digits_cnn.pt2", "--pipeline", "rpg", "--data", HELDOUT, "--train-data", TRAIN, "--quiet",
        "--set", "rpg.epochs=0", "--set", "rpg.verify_onnx=false")


def test_a_ring_over_budget_grows_until_it_is_within(tmp_path):
    """Projection only (no fine-tune, so it is quick) onto a ring of 1/8 of the generated weights loses most of
    the accuracy; the stage doubles N (grow_factor 2) until the paired validation bound is within the budget (here a
    deliberately loose one, rpg.max_drop=85: projection alone is within it only at half the generated weights)."""
    res = run_cli(*GROW, "--set", "rpg.ring_size=6720", "--set", "rpg.grow_factor=2", "--set", "rpg.max_drop=85",
                  "--max-drop", "100", "--out", tmp_path / "o")
    assert res.code == 0, res
    stage = read_report(tmp_path / "o")["stages"][0]
    tried = stage["ring_sizes_tried"]
    assert [t["ring_size"] for t in tried] == [6720, 13440, 26880], tried
    assert [t["accepted"] for t in tried] == [False, False, True]
    assert all(t["bound"] > 85 for t in tried[:-1]) and tried[-1]["bound"] <= 85
    assert stage["ring_size"] == tried[-1]["ring_size"] and stage["drop_bound"] == tried[-1]["bound"]
    outcome = stage["outcome"]
    assert outcome["kept"] == "compressed" and outcome["stop"] == "within_budget" and outcome["budget"] == 85
    assert outcome["value"] == 26880 / stage["generated_weights"], outcome
    assert any(note.startswith("ring sizes tried: N=6,720 (12%): bound") for note in stage["notes"])
    assert load_file(str(tmp_path / "o" / "model.safetensors"))["rpg_ring"].numel() == stage["ring_size"]


def test_no_ring_below_the_generated_weights_within_budget_keeps_the_input(tmp_path):
    """Growth stops below N = T (a ring of all the generated weights saves nothing): with every smaller ring over
    budget the stage keeps its input and says so, and nothing of a ring is stored."""
    res = run_cli(*GROW, "--set", "rpg.ring_size=6720", "--set", "rpg.grow_factor=2", "--out", tmp_path / "o")
    assert res.code == 0, res
    stage = read_report(tmp_path / "o")["stages"][0]
    assert [t["ring_size"] for t in stage["ring_sizes_tried"]] == [6720, 13440, 26880]
    assert not any(t["accepted"] for t in stage["ring_sizes_tried"]) and stage["kept_input"] is True
    assert stage["outcome"]["kept"] == "input" and stage["outcome"]["stop"] == "none_within", stage["outcome"]
    lowest = min(t["bound"] for t in stage["ring_sizes_tried"])  # rounded in the record
    assert abs(stage["outcome"]["bound"] - lowest) < 1e-3 and lowest > stage["outcome"]["budget"], stage["outcome"]
    assert "rpg_ring" not in load_file(str(tmp_path / "o" / "model.safetensors"))
    assert stage["dof"] == stage["params"]


def test_grow_false_keeps_the_ring_and_says_it_is_over_budget(tmp_path):
    res = run_cli(*GROW, "--set", "rpg.ring_size=6720", "--set", "rpg.grow=false", "--out", tmp_path / "o")
    assert res.code == 3, res  # the run's gate reports what the kept ring costs
    stage = read_report(tmp_path / "o")["stages"][0]
    assert stage["ring_size"] == 6720 and len(stage["ring_sizes_tried"]) == 1
    assert stage["ring_sizes_tried"][0]["accepted"] is False
    assert stage["outcome"]["kept"] == "compressed" and stage["outcome"]["stop"] == "over_budget", stage["outcome"]
