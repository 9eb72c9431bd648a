"""quantize judged like every other stage: the quantized graph's drop in the run's metric on validation, with the run's
one budget rule (judge/decide.py), after auto's cosine check and the objective have chosen a form.

Why: auto's check compares outputs with the float graph by cosine, a fast proxy that can hold while the task metric
moves (near-tied class scores flip their argmax under int8 noise while the score vectors stay 0.9999 alike), and it
compares with the float export of the *current* model, so what earlier stages spent is not in it. The judgement here
is the cumulative drop from the original model, as the gate measures it, within quantize's share of --max-drop.
A form auto chose that fails it falls back: to int8 weight-only with float activations (objective size: the file
still shrinks; its 8-bit MatMul weights are dequantized on every call, so the speed objectives skip it) and then to
the graph quantize was given; a form the user forced (mode=static|dynamic, weight_bits=4) is kept with a warning.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import onnx

from compressor.algorithms.quantize.auto import weighted_nodes
from compressor.algorithms.quantize.output_check import CHECK_CHUNK
from compressor.algorithms.quantize.objective import graph_form
from compressor.io.data import Dataset
from compressor.io.onnx_files import copy_onnx
from compressor.judge.budget import BudgetDecision
from compressor.runtime.calls import EVAL_BATCH, onnx_predict, ort_session

Judge = Callable[[object], BudgetDecision]
FORM_WORDS = {"static": "static int8", "dynamic": "dynamic int8", "mixed": "static and dynamic int8",
              "4bit": "4-bit weight", "weight_only": "int8 weight-only", "float": "float"}


@dataclass
class Judged:
    """The notes, the decision on what shipped (None: nothing judged), and a headline when the judgement changed
    or questions the shipped form (a fallback, a forced form over budget): the stage's decision line then."""

    notes: list[str] = field(default_factory=list)
    decision: BudgetDecision | None = None
    headline: str | None = None


@dataclass
class MetricJudge:
    """What quantize_onnx needs to judge its graph: `score` (outputs on validation -> the budget decision), how to
    name the graph it was given, whether to judge a graph without quantized ops, and, after, the `result`."""

    score: Judge
    given_words: str = "the float graph"
    always: bool = False
    result: Judged | None = None


def _decide(path: Path, check: Dataset, judge: Judge) -> BudgetDecision:
    """The judgement of the graph at `path`: a graph whose outputs do not depend on the batch runs in auto's small
    check chunks (ONNX Runtime's activation arena grows with the batch), one that takes its activation scales at run time in the report's batches."""
    batch = EVAL_BATCH if graph_form(path) in ("dynamic", "mixed") else CHECK_CHUNK
    return judge(onnx_predict(ort_session(path), check, batch))


def _batches(form: str, check: Dataset) -> str:
    return (f" (in batches of {min(EVAL_BATCH, len(check))}: its activation scales are taken per batch at run time)"
            if form in ("dynamic", "mixed") else "")


def judge_in_metric(dst: Path, given: Path, check: Dataset, judge: Judge, chosen_by_auto: bool,
                    weight_only: Callable[[Path], bool] | None, tmp: Path, given_words: str = "the float graph",
                    always: bool = False) -> Judged:
    """Judge the graph in `dst` on `check` (the validation set `judge` scores). When auto's choice is rejected,
    leave in `dst` the first fallback that holds: `weight_only(path)` writes the all weight-only form (False: no
    node for it; None: not tried), else `given` (the graph quantize was given, `given_words`). `always`: judge a
    graph that holds no quantized op too (a ring's or basis's own int8 tensors sit in ordinary ops)."""
    form = graph_form(dst)
    if form == "float" and not always:
        return Judged()  # the verified float export: nothing quantized to judge
    words = FORM_WORDS[form] if form != "float" else given_words
    decision = _decide(dst, check, judge)
    if decision.accepted:
        return Judged([f"{words} graph in the run's metric: validation {decision.describe()}{_batches(form, check)}"],
                      decision)
    if form == "float":  # a compact graph with nothing else quantized: its ring / coefficients are the structure's
        warning = (f"WARNING: {words} is over quantize's budget in the run's metric: validation {decision.describe()}"
                   "; quantize has no safer form of it, the gate decides")
        return Judged([warning], decision, warning)
    if not chosen_by_auto:
        warning = (f"WARNING: the forced {words} form is over quantize's budget in the run's metric: validation "
                   f"{decision.describe()} (mode=auto falls back to a safer form)")
        return Judged([warning], decision, warning)
    notes = [f"auto's {words} choice held the cosine check but not the run's metric: validation "
             f"{decision.describe()}{_batches(form, check)}"]
    if weight_only is not None and form != "weight_only":
        fallback = tmp / "weight-only-fallback.onnx"
        try:
            held = _decide(fallback, check, judge) if weight_only(fallback) else None
        except Exception as exc:  # a fallback that cannot be built or run: the graph quantize was given ships
            held = None
            notes.append(f"int8 weight-only could not be tried ({type(exc).__name__}: {str(exc)[:120]})")
        if held is not None and held.accepted:
            fallback.replace(dst)
            headline = f"int8 weight-only shipped: auto's {words} choice failed the run's metric on validation"
            return Judged(notes + [f"shipped int8 weight-only (float activations) instead: validation "
                                   f"{held.describe()}"], held, headline)
        if held is not None:
            notes.append(f"int8 weight-only rejected too: validation {held.describe()}")
    copy_onnx(given, dst)
    headline = f"{given_words} shipped: auto's int8 forms fail quantize's budget in the run's metric on validation"
    return Judged(notes + [headline], decision, headline)


def weight_only_writer(work: Path, forms, exclude: list[str]) -> Callable[[Path], bool]:
    """Writes every weighted node of `work` (less `exclude`) as int8 weight-only with float activations."""
    def write(path: Path) -> bool:
        names = [n.name for n in weighted_nodes(onnx.load(str(work), load_external_data=False))
                 if n.name and n.name not in exclude]
        if not names:
            return False
        forms.mixed(path, [], [], names, [])
        return True
    return write
