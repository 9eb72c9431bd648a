"""Metrics on torch modules and on ONNX Runtime sessions, computed the same way for both.

With labels: top-1 accuracy (in percent). Without labels: agreement of the predicted class with the original
model's (percent), plus the cosine similarity of outputs to the original's (min and mean).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn

from compressor.data import Dataset
from compressor.errors import DataError

EVAL_BATCH = 256


def first_tensor(out: object) -> torch.Tensor:
    """The main output of a forward: the tensor itself, the first of a tuple, or `logits` of a dict/dataclass."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        if "logits" in out:
            return first_tensor(out["logits"])
        return first_tensor(next(iter(out.values())))
    if hasattr(out, "logits"):
        return first_tensor(out.logits)
    if isinstance(out, (tuple, list)) and out:
        return first_tensor(out[0])
    raise DataError(f"the model returned {type(out).__name__}; expected a tensor (or a tuple/dict of tensors)")


def takes_keywords(model: nn.Module, names: list[str]) -> bool:
    """Whether the model expects its inputs by keyword: a `.pt2` program exported with kwargs records them in
    its input spec; an eager forward takes keywords unless its only input is the conventional `x`."""
    if isinstance(model, torch.jit.ScriptModule):
        return False
    spec = getattr(model, "_in_spec", None)
    if isinstance(model, torch.fx.GraphModule) and spec is not None:
        try:
            kwargs_spec = spec.children_specs[1]
            return bool(kwargs_spec.context)
        except (AttributeError, IndexError, TypeError):
            return False
    return names != ["x"]


def call_model(model: nn.Module, batch: Dataset, device: torch.device | str = "cpu") -> torch.Tensor:
    """Run the model on one batch, by keyword when it takes its inputs named, else positionally (and the other
    way round if the first refuses the call)."""
    inputs = {k: v.to(device) for k, v in batch.inputs.items()}
    calls = [lambda: model(**inputs), lambda: model(*inputs.values())]
    if not takes_keywords(model, list(inputs)):
        calls.reverse()
    try:
        return first_tensor(calls[0]())
    except (TypeError, ValueError) as exc:
        if len(inputs) == 1 and "keyword" not in str(exc) and "argument" not in str(exc):
            raise
        return first_tensor(calls[1]())


@torch.no_grad()
def predict(model: nn.Module, data: Dataset, device: torch.device | str = "cpu",
            batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Outputs of the whole dataset (on CPU, float32). Bad input shapes become one-line DataErrors."""
    from compressor.layers import set_train

    set_train(model, False)
    outs = []
    for batch in data.batches(batch_size):
        try:
            outs.append(call_model(model, batch, device).detach().float().cpu())
        except DataError:
            raise
        except Exception as exc:
            shapes = ", ".join(f"{k}{tuple(v.shape)}" for k, v in batch.inputs.items())
            msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise DataError(f"{data.source}: the model cannot run on inputs {shapes}: {msg}") from exc
    return torch.cat(outs)


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
    from compressor.plugins import plugin_metrics

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


def onnx_predict(session, data: Dataset, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Outputs of an ONNX Runtime session on the dataset (first graph output)."""
    names = [i.name for i in session.get_inputs()]
    outs = []
    for batch in data.batches(batch_size):
        if set(names) == set(batch.inputs):
            feed = {n: batch.inputs[n].numpy() for n in names}
        else:
            feed = dict(zip(names, (v.numpy() for v in batch.inputs.values())))
        outs.append(torch.from_numpy(np.asarray(session.run(None, feed)[0], dtype=np.float32)))
    return torch.cat(outs)


def evaluate_onnx(session, data: Dataset, reference: torch.Tensor | None) -> Metrics:
    return score(onnx_predict(session, data), data, reference)


MetricFn = Callable[[torch.Tensor, Dataset, torch.Tensor | None], Metrics]
