"""The learning-rate probe: keeps the default where it trains best, and moves to a smaller rate where the default
would drive a model away from the state it should stay near (a pretrained model being distilled to itself)."""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from compressor.core.lr_probe import FACTORS, fit_lr
from compressor.core.masks import MaskRegistry
from compressor.io.data import Dataset


def _ctx(data: Dataset, loss: str = "ce") -> SimpleNamespace:
    return SimpleNamespace(require_training=lambda stage: (data, data), device=torch.device("cpu"),
                           masks=MaskRegistry(), precision="fp32", metric=SimpleNamespace(loss=loss))


def _data(n: int = 600) -> Dataset:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 16, generator=gen)
    return Dataset({"x": x}, (x[:, :4].sum(1) > 0).long(), "synthetic")


def test_the_default_rate_is_kept_where_it_trains_best():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = fit_lr(_ctx(_data()), model, 1e-3, 32,
                    lambda m, b, out: nn.functional.cross_entropy(out, b.labels), seed=0)
    assert result.lr == 1e-3, result
    assert set(result.losses) == {1e-3 * f for f in FACTORS}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model is left as it was


def test_a_smaller_rate_where_the_default_moves_a_model_off_its_target():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 8))
    teacher = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 8))
    teacher.load_state_dict(model.state_dict())
    with torch.no_grad():  # a slightly perturbed copy: close to its target, as a lightly pruned pretrained model is
        model[0].weight.add_(0.01 * torch.randn_like(model[0].weight))

    def distill(m, b, out):
        with torch.no_grad():
            ref = teacher(b.inputs["x"])
        return ((out - ref) ** 2).mean()

    result = fit_lr(_ctx(_data(), "mse"), model, 1e-1, 32, distill, seed=0)
    assert result.lr < 1e-1, result.describe()
    assert result.losses[result.lr] < result.losses[1e-1]
