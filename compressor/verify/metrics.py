"""Metrics on torch modules and on ONNX Runtime sessions, computed the same way for both.

With labels: top-1 accuracy (in percent). Without labels: agreement of the predicted class with the original
model's (percent), plus the cosine similarity of outputs to the original's (min and mean).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from compressor.errors import DataError
from compressor.io.calls import onnx_predict, predict
from compressor.io.data import Dataset
from compressor.registry import plugin_metrics


@dataclass
class Metrics:
    """The primary metric (name, value in percent) and secondary figures."""

    name: str
    value: float
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float | str]:
        return {"metric": self.name, "value": self.value, **self.extra}


def check_labels(data: Dataset, num_outputs: int) -> None:
    if data.labels is not None and int(data.labels.max()) >= num_outputs:
        raise DataError(
            f"{data.source}: label {int(data.labels.max())} is out of range for a model with {num_outputs} outputs"
        )


def score(outputs: torch.Tensor, data: Dataset, reference: torch.Tensor | None) -> Metrics:
    """Accuracy against labels, else agreement/cosine against the reference (original model) outputs."""
    logits = outputs.reshape(outputs.shape[0], -1) if outputs.ndim > 2 else outputs
    extra: dict[str, float] = {}
    if reference is not None:
        ref = reference.reshape(reference.shape[0], -1)
        cos = torch.nn.functional.cosine_similarity(outputs.reshape(ref.shape), ref, dim=1, eps=1e-12)
        extra["cosine_min"] = float(cos.min())
        extra["cosine_mean"] = float(cos.mean())
    for name, fn in plugin_metrics().items():
        try:
            value = fn(outputs, data.labels, reference)
        except Exception:  # a broken metric plugin is skipped, never fatal
            value = None
        if value is not None:
            extra[name] = float(value)
    if data.labels is not None and logits.ndim == 2:
        check_labels(data, logits.shape[1])
        acc = (logits.argmax(1) == data.labels).float().mean().item() * 100.0
        return Metrics("accuracy", acc, extra)
    if reference is None:
        return Metrics("agreement", 100.0, {"cosine_min": 1.0, "cosine_mean": 1.0})
    ref = reference.reshape(reference.shape[0], -1) if reference.ndim > 2 else reference
    if logits.ndim == 2 and logits.shape[1] > 1:
        agree = (logits.argmax(1) == ref.argmax(1)).float().mean().item() * 100.0
    else:
        agree = extra["cosine_mean"] * 100.0
    return Metrics("agreement", agree, extra)


def evaluate(model: nn.Module, data: Dataset, reference: torch.Tensor | None,
             device: torch.device | str = "cpu") -> Metrics:
    return score(predict(model, data, device), data, reference)


def evaluate_onnx(session, data: Dataset, reference: torch.Tensor | None) -> Metrics:
    return score(onnx_predict(session, data), data, reference)


MetricFn = Callable[[torch.Tensor, Dataset, torch.Tensor | None], Metrics]
