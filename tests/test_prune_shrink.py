"""shrink and prune: policies, masks, the shrinkage rule, sparse encodings, and the sizes the defaults reach."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from safetensors.torch import save_file

import compressor
from compressor.algorithms.prune.policies import ranked_masks
from compressor.core.shrinkage import ShrinkConfig, selective_shrinkage
from compressor.io.encodings import decode_tensor, encode_tensor, entropy_bound_bytes
from compressor.io.safetensors_io import read_weights
from tests.conftest import HELDOUT, ROOT, SAMPLES, TRAIN, VAL, read_report, run_cli


def random_layers(seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = {"a": (300, 64), "b": (100, 300), "c": (10, 100), "conv": (16, 1, 3, 3)}
    return {n: torch.randn(s, generator=g) * (i + 1) for i, (n, s) in enumerate(shapes.items())}


def test_class_uniform_gives_every_layer_the_same_sparsity():
    w = random_layers()
    masks = {n: torch.ones_like(t, dtype=torch.bool) for n, t in w.items()}
    p = 0.3
    for step in range(1, 4):
        target = 1 - (1 - p) ** step
        masks = ranked_masks("uniform", w, masks, target)
        for n, m in masks.items():
            s = 1 - int(m.sum()) / m.numel()
            assert abs(s - target) <= 0.5 / m.numel() + 1e-12, (n, s, target)


def test_class_blinded_hits_the_global_target_within_one_weight_and_differs_per_layer():
    w = random_layers()
    w["b"][:5, :5] = 0.5  # ties across the threshold must not over- or under-prune
    masks = {n: torch.ones_like(t, dtype=torch.bool) for n, t in w.items()}
    total = sum(t.numel() for t in w.values())
    for target in (0.1, 0.55, 0.9):
        masks = ranked_masks("blinded", w, masks, target)
        kept = sum(int(m.sum()) for m in masks.values())
        assert abs((total - kept) - round(target * total)) <= 1
    rates = {n: 1 - int(m.sum()) / m.numel() for n, m in masks.items()}
    assert rates["a"] > rates["c"], "global |w| ranking prunes the small-magnitude layer more"
    # pruned weights are the smallest: every kept |w| >= every pruned |w| (globally)
    kept_min = min(float(w[n][m].abs().min()) for n, m in masks.items())
    pruned_max = max(float(w[n][~m].abs().max()) for n, m in masks.items() if (~m).any())
    assert kept_min >= pruned_max


def shaped_layers():
    """Two layers of different scale AND shape: a Gaussian (scale 1) and a heavy-tailed Laplace (scale 5)."""
    g = torch.Generator().manual_seed(1)
    gauss = torch.randn(200, 50, generator=g)
    u = torch.rand(200, 50, generator=g).clamp(1e-6, 1 - 1e-6) - 0.5
    laplace = -torch.sign(u) * torch.log1p(-2 * u.abs()) * 5.0
    return {"gauss": gauss, "laplace": laplace}


def test_each_policy_prunes_a_different_set_and_distribution_uses_the_std_of_unpruned_weights():
    w = shaped_layers()
    ones = {n: torch.ones_like(t, dtype=torch.bool) for n, t in w.items()}
    rates = {}
    for policy in ("blinded", "uniform", "distribution"):
        masks = ranked_masks(policy, w, ones, 0.5)
        rates[policy] = {n: 1 - int(m.sum()) / m.numel() for n, m in masks.items()}
    # blinded ranks raw |w|: the small-scale layer goes first; uniform: equal; distribution: scale removed, so
    # the heavy-tailed layer (more mass near zero relative to its std) loses more
    assert rates["blinded"]["gauss"] > 0.7 and rates["blinded"]["laplace"] < 0.3
    assert abs(rates["uniform"]["gauss"] - rates["uniform"]["laplace"]) < 1e-3
    assert rates["distribution"]["laplace"] > rates["distribution"]["gauss"] + 0.05
    assert rates["distribution"]["gauss"] > 0.3
    # second step from a pruned state: sigma over the unpruned weights only (counting zeros makes it drift)
    first = ranked_masks("distribution", w, ones, 0.5)
    second = ranked_masks("distribution", w, first, 0.7)
    pruned_w = {n: w[n] * first[n] for n in w}

    def reference(std_of):
        sal = torch.cat([(pruned_w[n].abs() / std_of(n)).reshape(-1)[first[n].reshape(-1)] for n in w])
        cut = sal.sort().values[int(round(0.7 * sum(t.numel() for t in w.values()))) - int(sum((~first[n]).sum()
                                                                                                 for n in w))]
        return {n: (pruned_w[n].abs() / std_of(n) >= cut) & first[n] for n in w}

    alive = reference(lambda n: pruned_w[n].abs()[first[n]].std())
    with_zeros = reference(lambda n: pruned_w[n].abs().std())
    agree = sum(int((second[n] == alive[n]).sum()) for n in w) / sum(t.numel() for t in w.values())
    agree_zeros = sum(int((second[n] == with_zeros[n]).sum()) for n in w) / sum(t.numel() for t in w.values())
    assert agree > 0.999 and agree_zeros < 0.99, (agree, agree_zeros)


@pytest.mark.parametrize("kind", ["dense", "bitmask", "codebook1", "codebook2", "codebook4", "codebook8", "fp16"])
def test_every_sparse_encoding_round_trips_exactly(kind):
    g = torch.Generator().manual_seed(1)
    t = torch.randn(37, 53, generator=g)  # odd sizes: bit packing tails
    if kind != "dense":
        t[torch.rand(t.shape, generator=g) < 0.85] = 0
    if kind.startswith("codebook"):
        bits = int(kind[len("codebook"):])
        book = torch.linspace(-1, 1, (1 << bits) + 1)
        book = book[book != 0][: 1 << bits]
        idx = torch.randint(0, book.numel(), t.shape, generator=g)
        t = torch.where(t != 0, book[idx], torch.zeros(()))
    if kind == "fp16":
        t = t.half()
    parts, rec = encode_tensor("w", t)
    expected = {"dense": "dense", "bitmask": "bitmask", "fp16": "bitmask"}.get(kind, "codebook")
    assert rec["encoding"] == expected
    if expected == "codebook":
        assert rec["bits"] <= int(kind[len("codebook"):])
    out = decode_tensor("w", rec, parts)
    assert out.dtype == t.dtype and torch.equal(out, t)
    stored = sum(p.numel() * p.element_size() for p in parts.values())
    assert stored <= t.numel() * t.element_size()
    assert entropy_bound_bytes(t) <= stored + 1


def test_shrink_rule_decays_irrelevant_weights_more_than_relevant_ones():
    torch.manual_seed(0)
    model = torch.nn.Linear(20, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    x = torch.randn(256, 20)
    x[:, 10:] *= 1e-3  # inputs 10..19 barely matter: their weights get ~0 gradient
    y = x[:, :10].sum(1, keepdim=True)  # the target is exactly what the first 10 weights compute
    cfg = ShrinkConfig(gamma=0.05)
    rule = selective_shrinkage(model, ["weight"], cfg, steps_per_epoch=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fractions = []
    for step in range(100):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x) + 0.1 * torch.randn(256, 1), y).backward()
        fractions.append(rule.grad_hook(model, step)["relevant"])
        opt.step()
    w = model.weight.detach()[0]
    relevant, irrelevant = w[:10].abs().mean(), w[10:].abs().mean()
    assert irrelevant < 0.6 * relevant, (relevant, irrelevant)
    assert 0.0 < np.mean(fractions) < 1.0


def dense_safetensors_bytes(tmp_path, model_file: str) -> int:
    state = torch.load(SAMPLES / model_file, weights_only=True)
    path = tmp_path / "dense.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path.stat().st_size


# measured with the budget rule of judge/budget.py at the whole-search confidence of judge/looks.py and prune's
# default half share of the gate before quantize, on the 450 fresh validation samples (bench/results/seeds.md has
# every seed): seed 0 keeps MLP 46.9% / 5.9x, CNN 68.6% / 11.3x
@pytest.mark.slow
@pytest.mark.parametrize("model,min_sparsity,min_ratio", [("mlp", 0.45, 5.5), ("cnn", 0.65, 10)])
def test_default_shrink_prune_quantize_reaches_the_promised_sparsity_and_size(tmp_path, model, min_sparsity,
                                                                              min_ratio):
    out = tmp_path / "o"
    res = run_cli(SAMPLES / f"digits_{model}.pt2", "--pipeline", "shrink,prune,quantize", "--data", HELDOUT,
                  "--train-data", TRAIN, "--val-data", VAL, "--out", out, "--quiet", "--set", "quantize.objective=size")
    assert res.code == 0, res
    report = read_report(out)
    assert report["sparsity"]["sparsity"] >= min_sparsity - 1e-6
    prune = report["stages"][1]
    kept = [h for h in prune["history"][1:] if abs(h["sparsity"] - prune["sparsity"]) < 1e-6]
    assert kept and kept[-1]["drop_bound"] <= 0.5  # the kept step was within prune's half share
    assert report["baseline"]["value"] - min(a["metric_value"] for a in report["artifacts"]) <= 1.0
    smallest = min(a["size"] for a in report["artifacts"])
    assert dense_safetensors_bytes(tmp_path, f"digits_{model}.pt") / smallest >= min_ratio
    assert (out / "sparsity.png").stat().st_size > 1000
    assert "| layer | weights | non-zeros | sparsity |" in (out / "report.md").read_text()
    # digits_val is fresh to the originals (a fixed number of epochs): no selection-gap warning
    assert not any("more than chance easily explains" in n for n in report["notes"])
    shrink = report["stages"][0]
    assert len(shrink["history"]) == 1 + 10 and all("relevant" in h for h in shrink["history"][1:])
    # zeros survive quantization: the int8 ONNX weights are at least as sparse as the torch model
    onnx_model = onnx.load(str(out / "model.onnx"))
    int8 = [numpy_helper.to_array(i) for i in onnx_model.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    zeros = sum(int((a == 0).sum()) for a in int8)
    pruned = report["sparsity"]["prunable_weights"] - report["sparsity"]["prunable_nonzeros"]
    assert zeros >= pruned
    # and survive the safetensors round trip exactly
    reloaded = compressor.load(out)
    nnz = sum(int((p != 0).sum()) for n, p in reloaded.named_parameters()
              if n in {l["name"] for l in report["sparsity"]["per_layer"]})
    assert nnz == report["sparsity"]["prunable_nonzeros"]
    # the note says how safetensors stores each weight model.onnx holds as int8 (a kept codebook is no int8 copy)
    stored = next(n for n in report["notes"] + [x for st in report["stages"] for x in st["notes"]]
                  if n.startswith("model.safetensors: "))
    encodings = read_weights(out / "model.safetensors")[1]["encodings"]
    codebook = [n for n, rec in encodings.items() if rec.get("encoding") == "codebook"]
    assert ("int8 in model.onnx stored as codebook here" in stored) == bool(codebook), stored
    assert f"{len(codebook)} weights stored as model.onnx holds them" not in stored or not codebook, stored


def test_prune_on_pt2_and_eager_gives_the_same_result(tmp_path):
    common = ["--pipeline", "prune", "--set", "prune.target=0.6", "--set", "prune.epochs_per_step=1",
              "--set", "prune.codebook=off", "--data", HELDOUT, "--train-data", TRAIN, "--quiet"]
    res = run_cli(SAMPLES / "digits_mlp.pt2", *common, "--out", tmp_path / "a")
    assert res.code == 0, res
    res = run_cli(SAMPLES / "digits_mlp.pt", "--arch", "sample_models.digits_models:mlp", *common,
                  "--out", tmp_path / "b", cwd=ROOT)
    assert res.code == 0, res
    a, b = compressor.load(tmp_path / "a"), compressor.load(tmp_path / "b", trust_code=True)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb
        assert torch.equal(pa == 0, pb == 0), na  # same masks
        assert torch.allclose(pa, pb, atol=1e-5), na
    ra, rb = read_report(tmp_path / "a"), read_report(tmp_path / "b")
    assert ra["sparsity"]["per_layer"] == rb["sparsity"]["per_layer"]
    assert ra["sparsity"]["sparsity"] >= 0.3, ra["sparsity"]  # steps toward 0.6 were kept, the same in both


def test_zeros_survive_later_fine_tuning_and_lobster_and_manifold_run(tmp_path):
    out = tmp_path / "o"
    res = run_cli(SAMPLES / "digits_cnn.pt2", "--pipeline", "shrink,prune", "--set", "shrink.epochs=2",
                  "--set", "shrink.mu=1.0", "--set", "prune.policy=lobster", "--set", "prune.max_steps=2",
                  "--set", "prune.epochs_per_step=1", "--data", HELDOUT, "--train-data", TRAIN, "--out", out,
                  "--quiet")
    assert res.code == 0, res
    report = read_report(out)
    assert report["sparsity"]["sparsity"] > 0.05
    assert report["gate"]["drop"] <= 1.0
    prune = report["stages"][1]
    assert prune["history"][-1]["sparsity"] >= prune["history"][1]["sparsity"]
    # the mask survived the shrinkage fine-tuning between LOBSTER steps: the shipped weights hold exactly the zeros
    reloaded = dict(compressor.load(out).named_parameters())
    layers = report["sparsity"]["per_layer"]
    assert sum(int((reloaded[l["name"]] != 0).sum()) for l in layers) == report["sparsity"]["prunable_nonzeros"]
    assert all(int((reloaded[n] == 0).sum()) >= v["numel"] - v["nonzeros"] for n, v in prune["per_layer"].items())


def test_manifold_term_taps_pt2_graph_and_restores_it():
    from compressor.core.features import FeatureTap, manifold_loss
    from compressor.io.load import load_model

    model = load_model(SAMPLES / "digits_cnn.pt2").module
    before = model.code
    tap = FeatureTap(model, ["conv1.weight", "fc1.weight"])
    x = torch.rand(8, 1, 8, 8)
    model(x)
    assert set(tap.features) == {"conv1", "fc1"} and tap.features["fc1"].shape == (8, 256)
    ref = {k: v.detach() for k, v in tap.features.items()}
    assert float(manifold_loss(tap.features, ref).detach()) < 1e-9
    tap.close()
    assert model.code == before
