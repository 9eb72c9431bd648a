"""quantize judged like every other stage: the quantized graph's drop in the run's metric on validation, with the run's
one budget rule (judge/decide.py), after auto's cosine check and the objective have chosen a form.

Why: auto's check compares outputs with the float graph by cosine, a fast proxy that can hold while the task metric
moves (near-tied class scores flip their argmax under int8 noise while the score vectors stay 0.9999 alike), and it
compares with the float export of the *current* model, so what earlier stages spent is not in it. The judgement here
is the cumulative drop from the original model, as the gate measures it, within quantize's share of --max-drop.
A form auto chose that fails it falls back: to int8 weight-only with float activations (objective size: the file
still shrinks) and then to the float graph; a form the user forced (mode=static|dynamic, weight_bits=4) is kept
with a warning.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import onnx

from compressor.algorithms.quantize.auto import weighted_nodes
from compressor.algorithms.quantize.objective import graph_form
from compressor.io.data import Dataset
from compressor.io.onnx_files import copy_onnx
from compressor.judge.budget import BudgetDecision
from compressor.runtime.calls import onnx_predict, ort_session

Judge = Callable[[object], BudgetDecision]


def _decide(path: Path, check: Dataset, judge: Judge) -> BudgetDecision:
    return judge(onnx_predict(ort_session(path), check))


def judge_in_metric(dst: Path, float_graph: Path, check: Dataset, judge: Judge, chosen_by_auto: bool,
                    weight_only: Callable[[Path], bool] | None) -> list[str]:
    """Judge the form in `dst` on `check` (the validation set `judge` scores); on rejection of auto's choice, leave
    in `dst` the first fallback that holds (`weight_only(path)` writes the all weight-only form, False if there is
    no node for it; None: not tried), else the float graph. Returns the notes."""
    form = graph_form(dst)
    if form == "float":
        return []  # the verified float export: nothing quantized to judge
    decision = _decide(dst, check, judge)
    if decision.accepted:
        return [f"the {form} int8 graph in the run's metric: validation {decision.describe()}"]
    if not chosen_by_auto:
        return [f"WARNING: the forced {form} form is over quantize's budget in the run's metric: validation "
                f"{decision.describe()} (mode=auto falls back to a safer form)"]
    notes = [f"auto's {form} choice held the cosine check but not the run's metric: validation {decision.describe()}"]
    fallback = dst.with_name("weight-only-fallback.onnx")
    if weight_only is not None and weight_only(fallback):
        held = _decide(fallback, check, judge)
        if held.accepted:
            fallback.replace(dst)
            return notes + [f"shipped int8 weight-only (float activations) instead: validation {held.describe()}"]
        notes.append(f"int8 weight-only rejected too: validation {held.describe()}")
    copy_onnx(float_graph, dst)
    return notes + ["shipped the float graph: no int8 form holds quantize's budget in the run's metric"]


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
