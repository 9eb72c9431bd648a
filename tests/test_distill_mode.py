"""A fine-tune that distils towards the original trains with stochastic layers off (dropout, attention dropout read
from a parent's `training` flag) and batch norm still adapting; a fine-tune on labels trains as the model was
trained. Checked on plain and TorchScript modules, and inside a real fine-tune of the sample embedder (a state_dict
with --arch: an eager TextEmbedder whose encoder has dropout)."""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from compressor.core.finetune import FinetuneSettings, enter_training, finetune
from compressor.io.data import Dataset
from compressor.run.pipeline import RunOptions
from compressor.run.prepare import prepare
from compressor.run.progress import Reporter
from tests.conftest import SAMPLES


class Attention(nn.Module):
    """Reads its own `training` flag, as transformers' attention does for its dropout probability."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.dropout(x, 0.5, training=self.training)


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), Attention(), nn.Dropout(0.5), nn.Linear(8, 2))


def _ctx(loss: str) -> SimpleNamespace:
    return SimpleNamespace(metric=SimpleNamespace(loss=loss))


def _data(labels: bool) -> Dataset:
    x = torch.randn(8, 4)
    return Dataset({"x": x}, torch.zeros(8, dtype=torch.long) if labels else None, "synthetic")


def _modes(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def test_distillation_turns_stochastic_layers_off_and_keeps_batch_norm_training():
    model = _model()
    enter_training(_ctx("cosine"), model, _data(labels=False))
    assert _modes(model) == [False, False, True, False, False, False]
    enter_training(_ctx("ce"), model, _data(labels=False))  # class logits without labels: KL to the original
    assert _modes(model) == [False, False, True, False, False, False]
    enter_training(_ctx("ce"), model, _data(labels=True))  # cross-entropy on labels: the model's own training mode
    assert all(_modes(model))
    enter_training(_ctx("mse"), model, _data(labels=True))  # labels beside a regression metric: still distillation
    assert _modes(model) == [False, False, True, False, False, False]


def test_torchscript_batch_norm_is_recognised():
    model = torch.jit.script(_model().eval())
    enter_training(_ctx("cosine"), model, _data(labels=False))
    assert [m.training for m in model.children()] == [False, True, False, False, False]


def test_a_real_distillation_fine_tune_runs_without_dropout(tmp_path):
    options = RunOptions(model=SAMPLES / "text_embedder.pt", arch="sample_models.text_models:text_embedder",
                         pipeline=["prune"], data=SAMPLES / "embed_heldout.npz", out=tmp_path / "o",
                         train_data=SAMPLES / "embed_train.npz")
    ctx = prepare(options, Reporter(quiet=True))[0]
    dropouts = [m for m in ctx.model.modules() if isinstance(m, nn.Dropout) and m.p > 0]
    assert dropouts and ctx.train.labels is None
    seen: list[bool] = []
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.append(m.training)) for m in dropouts]
    try:
        finetune(ctx, ctx.model, FinetuneSettings(epochs=1, lr=1e-4, batch_size=64, max_steps_per_epoch=2))
    finally:
        for h in hooks:
            h.remove()
    assert seen and not any(seen)


def test_a_models_own_train_override_still_decides_its_batch_norm():
    """A model whose `train()` keeps its batch norm frozen (a backbone's norm_eval) keeps it frozen in a distillation."""
    class FrozenNorm(nn.Sequential):
        def train(self, mode: bool = True):
            super().train(mode)
            self[1].eval()
            return self

    model = FrozenNorm(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5))
    enter_training(_ctx("cosine"), model, _data(labels=False))
    assert _modes(model) == [False, False, False, False]
