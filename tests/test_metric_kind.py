"""Output kind and the run's metric: detection on the sample models, --metric checks, each metric's
direction in the budget helper and the gates, label-free distillation losses, progress lines without a terminal."""
from __future__ import annotations

import functools
import io

import pytest
import torch
from rich.console import Console

from compressor.core.finetune import distill_loss
from compressor.errors import UsageError
from compressor.io.data import load_dataset
from compressor.io.load import load_model
from compressor.judge.budget import drop, is_better, sample_scores, value_within, within_budget
from compressor.judge.kind import choose, detect, probabilities
from compressor.run.progress import Reporter
from compressor.runtime.calls import predict
from compressor.verify.gates import evaluate_gates
from tests.conftest import HELDOUT, SAMPLES


@functools.lru_cache(maxsize=None)
def outputs_of(model: str, data: str, labels: bool = True):
    loaded = load_model(SAMPLES / model)
    ds = load_dataset(SAMPLES / data, loaded.input_names)
    return predict(loaded.module, ds), (ds.labels if labels else None)


def test_digits_with_labels_is_accuracy():
    out, y = outputs_of("digits_cnn.pt2", HELDOUT.name)
    assert detect(out, y).name == "accuracy"
    assert detect(out, y).loss == "ce"


def test_text_classifier_without_labels_is_agreement():
    out, _ = outputs_of("text_classifier.pt2", "text_heldout.npz")
    choice = detect(out, None)
    assert (choice.name, choice.loss) == ("agreement", "kl")


def test_embedder_is_cosine_and_labels_that_do_not_fit_are_ignored():
    out, _ = outputs_of("text_embedder.pt2", "embed_heldout.npz")
    choice = detect(out, None)
    assert (choice.name, choice.loss, choice.higher_is_better) == ("cosine", "cosine", True)
    assert "unit L2 norm" in choice.reason
    # class labels beside a [N, T, V] output do not make it a classifier
    mlm, y = outputs_of("text_mlm.pt2", "text_heldout.npz")
    assert detect(mlm, y).name != "accuracy" and "labels ignored" in detect(mlm, y).reason


def test_probability_outputs_are_told_apart():
    """A sigmoid head (independent per-class probabilities) is no single-class decision: cosine, and the reason says
    multi-label; a softmax head is class probabilities: agreement, distilled on the probabilities, not as logits.
    Two columns matter most: any 2-column row of values in [0, 1] passes the logit rule's softmax confidence."""
    logits, y = outputs_of("digits_cnn.pt2", HELDOUT.name)
    sigmoid = detect(torch.sigmoid(logits), None)
    assert (sigmoid.name, sigmoid.loss) == ("cosine", "cosine") and "sigmoid multi-label" in sigmoid.reason
    pair = detect(torch.sigmoid(logits[:, :2]), None)
    assert pair.name == "cosine" and "class logits" not in pair.reason
    softmax = detect(torch.softmax(logits, -1), None)
    assert (softmax.name, softmax.loss) == ("agreement", "cosine") and "class probabilities" in softmax.reason
    assert detect(logits, y).reason.startswith("labels present and the output is class scores")
    # a softmax head's outputs are read as probabilities by the saturation bound, not squashed by a second softmax
    from compressor.judge.saturation import class_probability_scores

    probs = torch.softmax(logits, -1)
    picked = class_probability_scores(probs, None, probs, "agreement")
    assert torch.allclose(picked, probs.max(-1).values.double())
    true_class = probs.gather(1, y[:, None])[:, 0].double()
    assert torch.allclose(class_probability_scores(probs, y, probs, "accuracy"), true_class)
    # NaN is no probability; bf16 softmax rows (sums off by more than 1e-3 at 1000 classes) still are
    assert probabilities(torch.tensor([[0.5, float("nan")], [0.2, 0.3]])) is None
    wide = torch.softmax(torch.randn(8, 1000, generator=torch.Generator().manual_seed(0)), -1).bfloat16()
    assert probabilities(wide) == "softmax"


def test_regression_is_mse_and_unsure_prefers_cosine():
    g = torch.Generator().manual_seed(0)
    assert detect(torch.randn(50, 1, generator=g), None).name == "mse"
    assert detect(torch.randn(50, 1, generator=g), None).higher_is_better is False
    # raw (unnormalised) embeddings: small values, no confident argmax
    assert detect(0.1 * torch.randn(50, 384, generator=g), None).name == "cosine"


def test_metric_override_is_checked():
    out, y = outputs_of("text_embedder.pt2", "embed_heldout.npz")
    with pytest.raises(UsageError, match="accuracy needs integer labels"):
        choose(out, None, "accuracy")
    with pytest.raises(UsageError, match="unknown"):
        choose(out, None, "bleu")
    assert choose(out, None, "mse").higher_is_better is False
    assert choose(out, None, "mse").reason == "--metric mse"


def test_budget_direction():
    assert drop(99.0, 98.0) == 1.0 and drop(0.01, 0.03, higher_is_better=False) == pytest.approx(0.02)
    assert value_within(0.0, 0.5, 1.0, higher_is_better=False)
    assert not value_within(0.0, 1.5, 1.0, higher_is_better=False)
    assert value_within(0.0, -5.0, 1.0, higher_is_better=False)  # lower mse is never a drop
    assert not value_within(90.0, 89.0, 0.5)  # no silent widening to two samples


def test_paired_rule_follows_the_metric_direction():
    # mse: per-sample scores are -err/100, so the paired drop is the mse increase in mse units
    ref = torch.zeros(400, 4)
    worse, better = ref + 1.0, ref + 0.1
    base = sample_scores(ref, None, ref, "mse")
    assert not within_budget(base, sample_scores(worse, None, ref, "mse"), 0.5).accepted
    decision = within_budget(base, sample_scores(better, None, ref, "mse"), 0.5)
    assert decision.accepted and decision.drop == pytest.approx(0.01)
    assert sample_scores(torch.randn(3, 2), None, None, "my_plugin") is None
    assert is_better(0.1, 0.2, higher_is_better=False) and not is_better(0.1, 0.2)


def test_gates_follow_the_metric_direction():
    gates = evaluate_gates(0.0, 0.02, {"cosine_min": 0.97}, "mse", 100, 0.01, None, None,
                           {"mse": 0.05, "cosine_min": 0.98}, higher_is_better=False)
    by = {g["name"]: g["passed"] for g in gates}
    assert by == {"max_drop": False, "floor:mse": True, "floor:cosine_min": False}
    gates = evaluate_gates(100.0, 99.5, {"cosine_min": 0.99}, "cosine", 100, 1.0, 0.99, None, {"cosine": 99.0})
    assert all(g["passed"] for g in gates)


def test_distillation_losses():
    g = torch.Generator().manual_seed(0)
    t = torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=1)
    assert float(distill_loss(t, t, "cosine")) == pytest.approx(0.0, abs=1e-6)
    # the same direction at twice the length is a different embedding: the MSE term sees it
    assert float(distill_loss(2 * t, t, "cosine")) > 0.5
    logits = torch.randn(8, 5, 10, generator=g)
    assert float(distill_loss(logits, logits, "kl")) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_loss(logits.flip(-1), logits, "kl")) > 0.1


def test_progress_plain_lines_without_a_terminal():
    buf = io.StringIO()
    reporter = Reporter(Console(file=buf, force_terminal=False, width=200))
    with reporter.task("prune", None) as task:
        for step in range(3):
            task.advance(status=f"sparsity {step}")
    with reporter.task("fine-tune", 10) as task:
        task.advance()
        task.status("epoch 1/1 loss 0.5")
    lines = buf.getvalue().splitlines()
    assert [ln.split("|")[0].strip() for ln in lines[:3]] == [f"prune: step {i + 1} sparsity {i}" for i in range(3)]
    assert "ETA" in lines[-1] and "step 1/10" in lines[-1]
    quiet = io.StringIO()
    with Reporter(Console(file=quiet), quiet=True).task("prune", 3) as task:
        task.advance(status="x")
        task.status("y")
    assert quiet.getvalue() == ""
