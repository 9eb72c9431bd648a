"""The final confirmation: model.onnx judged once, at the end, on a slice of the validation set that no stage
decision has seen; when it fails, the run steps back along the stages it recorded.

Why: every stage decides on the same validation samples. judge/looks.py accounts for the looks inside each search,
but each stage holds its own confidence, and what ships is also shaped by export (int8, graph rewrites) after the last
decision. A slice held back from all of them is an independent check of the artifact itself: the test split of a
train / validation / test protocol (Cawley and Talbot 2010, JMLR 11), taken inside the validation data, because the
held-out set belongs to the report and the gate and no decision may read it.

The slice is `--confirm` of the validation rows (seeded), held back only when that gives at least CONFIRM_MIN
samples: fewer could not resolve a drop of a point, and would cost the searches their power for nothing. The
judgement is the run's rule (judge/decide.py) at the whole --max-drop. The path it steps back along is the pipeline
cut one stage at a time from its end (the export-time stage first, then each torch-side stage restored from its
checkpoint), so each state tried is less compressed than the last; the original's own export ends it. Every state
tried is a look that can keep an over-budget artifact, so each bounds at the confidence of judge/looks.py for as
many looks as the pipeline has stages.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from compressor.defaults import CONFIRM_MIN
from compressor.io.data import Dataset, split_validation
from compressor.judge.decide import judge_outputs
from compressor.judge.looks import per_look_confidence
from compressor.judge.metrics import score
from compressor.runtime.calls import onnx_predict, ort_session


def hold_back(val: Dataset | None, fraction: float, seed: int) -> tuple[Dataset | None, Dataset | None]:
    """(the validation rows the stages decide on, the confirmation slice or None): a seeded `fraction` of `val`,
    held back only when it is at least CONFIRM_MIN samples."""
    if val is None or fraction <= 0 or int(len(val) * fraction) < CONFIRM_MIN:
        return val, None
    return split_validation(val, fraction, seed + 1)  # another seed than a --val-data-less run's own split


def confirm_artifact(ctx, onnx_path, back: "StepBack", shipped: list[str]) -> dict[str, Any] | None:
    """model.onnx (made by the stages `shipped`) judged on the confirmation slice within --max-drop, each state the
    path may try at its share of the confidence (None: no slice held back)."""
    if ctx.confirm is None:
        return None
    reference = ctx.confirm_reference  # the original's, before any stage (a quantize-only run rounds its weights)
    base = score(reference, ctx.confirm, reference, ctx.metric)
    outputs = onnx_predict(ort_session(onnx_path), ctx.confirm)
    decision = judge_outputs(outputs, ctx.confirm, reference, base, ctx.metric, ctx.max_drop,
                             per_look_confidence(ctx.confidence, max(1, back.looks)))
    return {"n": decision.n, "drop": decision.drop, "bound": decision.bound, "budget": decision.budget,
            "confidence": decision.confidence, "accepted": decision.accepted, "pipeline": shipped,
            "describe": decision.describe(), "stepped_back_from": [t["pipeline"] for t in back.tried]}


@dataclass
class StepBack:
    """What the runner carries from one try of the pipeline to the next: how many states the path may try, the
    pipeline as asked (its stages' budget shares and the recipe stay its own), when the run started, whether it is
    data-parallel (no step back: the other ranks have ended) and its `parallel` entry, and the confirmations that
    failed, in order."""

    looks: int
    plan: list[Any]
    started: float
    parallel: bool = False
    parallel_entry: dict[str, Any] | None = None
    tried: list[dict[str, Any]] = field(default_factory=list)


def confirmation_note(confirmed: dict[str, Any] | None, tried: list[dict[str, Any]], n_val: int,
                      fraction: float) -> str:
    """The report's line on the confirmation: what held, and every state it stepped back from."""
    if confirmed is None:
        if fraction <= 0:
            return "final confirmation off (--confirm 0)"
        if n_val == 0:
            return "final confirmation not run: no validation data"
        return (f"final confirmation not run: {fraction:.0%} of {n_val} validation samples is fewer than "
                f"{CONFIRM_MIN} (every validation sample went to the stages' decisions)")
    steps = "".join(f"; {','.join(t['pipeline']) or 'the original'}: {t['describe']}, stepped back" for t in tried)
    verdict = ",".join(confirmed["pipeline"]) or "the original model"
    head = "WARNING: " if tried else ""
    return (f"{head}final confirmation of model.onnx on {confirmed['n']} validation samples no stage decision saw"
            f"{steps}; shipped {verdict}: {confirmed['describe']}")
