"""Which metric a run uses: detected from the model's outputs and the data, or chosen with `--metric`.

The rule (docs/metrics.md), on the original model's outputs:
1. labels present and the output is [N, C] with C > 1 (labels in range)  -> `accuracy` (class scores);
2. no labels, the output is a single column (or 1-D)                      -> `mse` (a regression);
3. no labels, every row has unit L2 norm (a normalised embedding)         -> `cosine`;
4. no labels, every value in [0, 1]: rows that sum to 1 are class probabilities (softmax) -> `agreement`;
   rows that do not are independent per-class probabilities (sigmoid, multi-label), where one argmax is no
   decision                                                               -> `cosine`;
5. no labels, the output looks like confident class scores: on average the softmax of a row puts at least
   `LOGIT_CONFIDENCE` on its argmax, and at least two different classes are predicted       -> `agreement`;
6. otherwise (unsure: raw embeddings, hidden states, anything else)       -> `cosine`.
Agreement with the original's argmax is meaningless on an embedding (the argmax of a 384-d sentence embedding
is no class), so when in doubt cosine is preferred. The chosen metric also picks the label-free fine-tuning loss:
agreement on logits -> KL distillation, anything else (probabilities, cosine, mse) -> cosine + MSE distillation of
outputs (core/finetune.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from compressor.errors import DataError, UsageError
from compressor.registry import plugin_metrics

BUILTIN = ("accuracy", "agreement", "cosine", "mse")
LOGIT_CONFIDENCE = 0.5
UNIT_NORM_TOL = 1e-3
PROBABILITY_SUM_TOL = 1e-3


@dataclass(frozen=True)
class MetricChoice:
    """The run's primary metric, why it was chosen, its direction and the label-free loss it implies."""

    name: str
    reason: str
    higher_is_better: bool = True
    loss: str = "cosine"  # "ce" (labels) | "kl" (logit distillation) | "cosine" (output distillation)

    @property
    def counted(self) -> bool:
        """Whether the metric counts samples (its resolution is one sample in points)."""
        return self.name in ("accuracy", "agreement")

    @property
    def unit(self) -> str:
        return {"accuracy": "%", "agreement": "%", "cosine": " pts"}.get(self.name, "")


def _rows(outputs: torch.Tensor) -> torch.Tensor:
    return outputs.reshape(outputs.shape[0], -1).float()


def _classes(outputs: torch.Tensor) -> int:
    return int(outputs.shape[-1]) if outputs.ndim >= 2 else 1


def probabilities(outputs: torch.Tensor) -> str | None:
    """"softmax" when every value is in [0, 1] and every row (last axis) sums to 1, "sigmoid" when every value is
    in [0, 1] and some row does not, None for anything else (logits, embeddings, one column)."""
    if _classes(outputs) < 2 or outputs.numel() == 0 or not outputs.is_floating_point():
        return None
    scores = outputs.double()
    if not bool(torch.isfinite(scores).all()) or float(scores.min()) < 0 or float(scores.max()) > 1:
        return None
    sums = scores.reshape(-1, scores.shape[-1]).sum(-1)
    # a row of C probabilities rounded to the output's precision sums to 1 within about C rounding steps
    tol = max(PROBABILITY_SUM_TOL, scores.shape[-1] * torch.finfo(outputs.dtype).eps)
    return "softmax" if bool(((sums - 1).abs() < tol).all()) else "sigmoid"


def labels_fit(outputs: torch.Tensor, labels: torch.Tensor | None) -> bool:
    return (labels is not None and outputs.ndim == 2 and outputs.shape[1] > 1 and labels.ndim == 1
            and labels.shape[0] == outputs.shape[0] and int(labels.min()) >= 0
            and int(labels.max()) < outputs.shape[1])


def detect(outputs: torch.Tensor, labels: torch.Tensor | None) -> MetricChoice:
    """The metric the output kind calls for (rules 1-5 of the module docstring). Class labels beside class logits
    that are out of range are a data error, never silently ignored."""
    shape = "x".join(str(s) for s in outputs.shape[1:]) or "scalar"
    if (labels is not None and outputs.ndim == 2 and outputs.shape[1] > 1 and labels.ndim == 1 and len(labels)
            and not labels_fit(outputs, labels)):
        raise DataError(f"label {int(labels.max())} is out of range for a model with {outputs.shape[1]} outputs "
                        f"(labels must be 0..{outputs.shape[1] - 1})")
    if labels_fit(outputs, labels):
        return MetricChoice("accuracy", f"labels present and the output is class scores [N, {shape}]", loss="ce")
    why_not_labels = " (labels ignored: they do not fit the output)" if labels is not None else ""
    if _classes(outputs) == 1:
        return MetricChoice("mse", f"a single output column [N, {shape}]: regression{why_not_labels}",
                            higher_is_better=False)
    rows = _rows(outputs)
    norms = rows.norm(dim=1)
    if outputs.ndim == 2 and bool(((norms - 1).abs() < UNIT_NORM_TOL).all()):
        return MetricChoice("cosine", f"no labels; every output row [N, {shape}] has unit L2 norm: an "
                                      f"embedding{why_not_labels}")
    kind = probabilities(outputs)
    if kind == "softmax":
        return MetricChoice("agreement", f"no labels; every output row [N, {shape}] is in [0, 1] and sums to 1: "
                                         f"class probabilities{why_not_labels}")
    if kind == "sigmoid":
        return MetricChoice("cosine", f"no labels; every output [N, {shape}] is in [0, 1] and rows do not sum to 1 "
                                      f"(e.g. sigmoid multi-label scores, where one argmax is no decision): judged "
                                      f"as score vectors{why_not_labels}")
    scores = outputs.reshape(-1, outputs.shape[-1]).float()
    confidence = float(torch.softmax(scores, -1).max(-1).values.mean())
    distinct = int(scores.argmax(-1).unique().numel())
    if confidence >= LOGIT_CONFIDENCE and distinct >= 2:
        return MetricChoice("agreement", f"no labels; outputs [N, {shape}] look like class logits (mean top "
                                         f"softmax {confidence:.2f}, {distinct} classes predicted){why_not_labels}",
                            loss="kl")
    return MetricChoice("cosine", f"no labels; outputs [N, {shape}] are not confident class scores (mean top "
                                  f"softmax {confidence:.2f}): treated as embeddings{why_not_labels}")


def choose(outputs: torch.Tensor, labels: torch.Tensor | None, requested: str | None = None) -> MetricChoice:
    """`--metric` if given (checked against the outputs and data), else `detect`."""
    auto = detect(outputs, labels)
    if not requested or requested == "auto":
        return auto
    why = f"--metric {requested}"
    if requested == "accuracy":
        if not labels_fit(outputs, labels):
            raise UsageError("--metric accuracy needs integer labels `y` in the data and class logits [N, C] "
                             f"from the model (got output {tuple(outputs.shape)}, "
                             f"{'no labels' if labels is None else 'labels that do not fit'})")
        return MetricChoice("accuracy", why, loss="ce")
    if requested == "agreement":
        if _classes(outputs) < 2:
            raise UsageError(f"--metric agreement needs class scores; the model outputs {tuple(outputs.shape)}")
        return MetricChoice("agreement", why, loss="kl")
    if requested in ("cosine", "mse"):
        return MetricChoice(requested, why, higher_is_better=requested != "mse",
                            loss="ce" if auto.name == "accuracy" else "cosine")
    plugins = plugin_metrics()
    if requested in plugins:
        lower = bool(getattr(plugins[requested], "lower_is_better", False))
        return MetricChoice(requested, f"{why} (plugin; the fine-tuning loss follows the detected "
                                       f"{auto.name})", higher_is_better=not lower, loss=auto.loss)
    raise UsageError(f"--metric {requested}: unknown; available: {', '.join((*BUILTIN, *plugins))}")
