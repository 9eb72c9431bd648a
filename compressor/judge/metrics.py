"""Metrics on torch modules and on ONNX Runtime sessions, computed the same way for both.

The primary metric is the run's `MetricChoice` (judge/kind.py): top-1 accuracy (percent) with labels; without
labels, agreement of the predicted class with the original model's (percent) for logits, 100 x the mean cosine
similarity to the original's outputs (points) for embeddings, or their mean squared error (lower is better).
Cosine min/mean and mse are always reported beside it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from compressor.errors import DataError
from compressor.io.data import Dataset
from compressor.judge.kind import MetricChoice, detect
from compressor.registry import plugin_metrics
from compressor.runtime.calls import onnx_predict, predict


@dataclass
class Metrics:
    """The primary metric (name, value) and secondary figures. Accuracy and agreement are in percent, cosine in
    points (100 x mean cosine to the original), mse in the output's units squared (lower is better)."""

    name: str
    value: float
    extra: dict[str, float] = field(default_factory=dict)
    higher_is_better: bool = True

    def as_dict(self) -> dict[str, float | str]:
        return {"metric": self.name, "value": self.value, **self.extra}


def check_labels(data: Dataset, num_outputs: int) -> None:
    if data.labels is not None and int(data.labels.max()) >= num_outputs:
        raise DataError(
            f"{data.source}: label {int(data.labels.max())} is out of range for a model with {num_outputs} outputs"
        )


def _plugins(outputs: torch.Tensor, data: Dataset, reference: torch.Tensor | None) -> dict[str, float]:
    extra = {}
    for name, fn in plugin_metrics().items():
        try:
            value = fn(outputs, data.labels, reference)
        except Exception:  # a broken metric plugin is skipped, never fatal
            value = None
        if value is not None:
            extra[name] = float(value)
    return extra


def score(outputs: torch.Tensor, data: Dataset, reference: torch.Tensor | None,
          choice: MetricChoice | None = None) -> Metrics:
    """The run's primary metric (`choice`; detected from these outputs if None) plus cosine min/mean and mse to
    the reference (the original model's outputs) and every plugin metric as secondary figures."""
    choice = choice or detect(reference if reference is not None else outputs, data.labels)
    extra: dict[str, float] = {}
    if reference is not None:
        ref = reference.reshape(reference.shape[0], -1)
        out = outputs.reshape(ref.shape)
        cos = torch.nn.functional.cosine_similarity(out, ref, dim=1, eps=1e-12)
        extra["cosine_min"] = float(cos.min())
        extra["cosine_mean"] = float(cos.mean())
        extra["mse"] = float(((out - ref) ** 2).mean())
    extra.update(_plugins(outputs, data, reference))
    name, up = choice.name, choice.higher_is_better
    if name == "accuracy":
        if data.labels is None:
            raise DataError(f"{data.source}: the run's metric is accuracy but this file has no labels `y`")
        logits = outputs.reshape(outputs.shape[0], -1)
        check_labels(data, logits.shape[1])
        return Metrics(name, (logits.argmax(1) == data.labels).float().mean().item() * 100.0, extra, up)
    if reference is None:
        raise DataError(f"metric {name} compares with the original model's outputs: none given")
    if name == "agreement":
        agree = (outputs.argmax(-1) == reference.argmax(-1)).float().mean().item() * 100.0
        return Metrics(name, agree, extra, up)
    if name == "cosine":
        return Metrics(name, extra["cosine_mean"] * 100.0, extra, up)
    if name == "mse":
        return Metrics(name, extra["mse"], extra, up)
    if name not in extra:
        raise DataError(f"metric plugin {name!r} returned no value on {data.source}")
    return Metrics(name, extra[name], extra, up)


def evaluate(model: nn.Module, data: Dataset, reference: torch.Tensor | None,
             device: torch.device | str = "cpu", choice: MetricChoice | None = None) -> Metrics:
    return score(predict(model, data, device), data, reference, choice)


def evaluate_onnx(session, data: Dataset, reference: torch.Tensor | None,
                  choice: MetricChoice | None = None) -> Metrics:
    return score(onnx_predict(session, data), data, reference, choice)


MetricFn = Callable[[torch.Tensor, Dataset, torch.Tensor | None], Metrics]
