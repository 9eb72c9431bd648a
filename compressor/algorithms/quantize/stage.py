"""quantize: post-training quantization of the exported ONNX graph through ONNX Runtime's quantizers.

Not from the papers; the field's standard (docs/ALGORITHMS.md §5). Static int8 with calibration samples from the
training (or calibration) set, never the held-out set (MinMax / Entropy / Percentile), per-channel weights by
default; or dynamic int8 (activation ranges taken at run time); or auto (auto.py: per node static, dynamic or int8
weight-only; then, by `objective` (objective.py), the form no slower than the float graph on this CPU, or 4-bit
block-wise MatMul weights where the validation check holds, int4.py). QDQ or QOperator. Weights are stored as int8
initializers (no QDQ pair on weights), so the file really shrinks. Its metric is measured by running the quantized
model in ONNX Runtime. Export-time: always the last stage.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import tempfile
from pathlib import Path
from typing import Callable

import onnx
import torch

from compressor.algorithms.quantize.auto import choose
from compressor.algorithms.quantize.config import QuantizeConfig
from compressor.algorithms.quantize.forms import OrtForms
from compressor.algorithms.quantize.int4 import choose_int4, force_int4, matmul_weight_names
from compressor.algorithms.quantize.judged import MetricJudge, judge_in_metric, weight_only_writer
from compressor.algorithms.quantize.left_out import computed_weight_nodes, constant_nodes, nodes_matching
from compressor.algorithms.quantize.objective import INT8_OPS, all_dynamic_writer, graph_form, pick_by_speed, \
    shipped_form
from compressor.algorithms.quantize.output_check import checker
from compressor.algorithms.quantize.preprocess import pre_process
from compressor.core.contract import StageContext
from compressor.errors import DataError, StageError, first_line
from compressor.io.data import Dataset, calibration_subset
from compressor.io.onnx_files import copy_onnx
from compressor.runtime.memory import release_memory
from compressor.stage import ExportStage, Outcome, StageResult


@contextlib.contextmanager
def _quiet():
    logger = logging.getLogger()
    level, handlers = logger.level, list(logger.handlers)
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:  # ORT's quantizer calls logging.info(), whose basicConfig() would leave the caller a root handler
        logger.setLevel(level)
        logger.handlers[:] = handlers


def _weights_note(config: QuantizeConfig) -> str:
    """How the int8 weights are stored, and whether their numbers hold on every x86 CPU (docs/ALGORITHMS.md §5)."""
    grain = "per-channel" if config.per_channel else "per-tensor"
    if config.reduce_range:
        return f"{grain} 7-bit weights (reduce_range: the same numbers on x86 CPUs with or without VNNI)"
    return (f"{grain} 8-bit weights (WARNING: on x86 CPUs without VNNI, e.g. AVX2 only, ONNX Runtime's u8s8 kernels "
            "can saturate and compute other numbers than verified on a CPU with VNNI; quantize.reduce_range=true "
            "avoids it)")


def _calibration_note(config: QuantizeConfig, sample: Dataset | None) -> str | None:
    return sample and (f"{config.calibration} calibration on {len(sample)} samples from {sample.source}, "
                       + _weights_note(config))


def quantize_onnx(src: Path, dst: Path, config: QuantizeConfig, calib: Dataset | None, seed: int,
                  check: Dataset | None = None, on_check: Callable[[str], None] | None = None,
                  out_of_time: Callable[[], bool] | None = None, judge: MetricJudge | None = None,
                  check_reference: torch.Tensor | None = None, float_timing: dict | None = None) -> list[str]:
    """Quantize `src` into `dst` with ONNX Runtime; returns notes for the report. `check` (validation data, never
    held-out) is what mode=auto verifies its choices on; the calibration set stands in when it is None.
    `on_check` hears the result of each of auto's checks (progress on a long model); `out_of_time` (--time-limit)
    ends the 4-bit step's search, keeping the int8 choice or the last 4-bit set that held. `judge` scores outputs on
    `check` in the run's metric against quantize's budget and keeps its result (judged.py); None: not judged.
    `check_reference`: `src`'s float outputs on `check` when the run has them (OutputCheck). `float_timing` receives
    the objective's timing of `src` on `check`, if it timed it (objective.py)."""
    notes = []
    with tempfile.TemporaryDirectory(prefix="compressor-q-") as tmp:
        work = Path(tmp) / "model.onnx"
        try:
            with _quiet():
                if config.preprocess:
                    pre_process(src, work)
                else:
                    copy_onnx(src, work)
                exclude = nodes_matching(onnx.load(str(work)), config.exclude) if config.exclude else []
                if config.exclude and not exclude:
                    raise StageError(f"quantize: exclude patterns {list(config.exclude)} match no node or weight")
                if exclude:
                    shown = ", ".join(exclude[:6]) + (f" and {len(exclude) - 6} more" if len(exclude) > 6 else "")
                    notes.append(f"left in float: {len(exclude)} nodes ({shown})")
                mode = config.mode
                if mode == "auto" and calib is None:
                    notes.append("auto: no calibration data (--train-data or --calib-data), so dynamic int8")
                    mode = "dynamic"
                if mode == "static" and calib is None:
                    raise DataError("quantize: static mode needs calibration samples: pass --train-data or "
                                    "--calib-data, or use --set quantize.mode=dynamic")
                sample = calibration_subset(calib, config.calib_samples, seed) if calib is not None else None
                tmp_dir = Path(tmp)
                base = work
                if config.weight_bits == "4":
                    base = tmp_dir / "int4.onnx"
                    notes += force_int4(work, base, config.int4_block, exclude)
                release_memory()  # the pre-processing's graphs and session
                forms = OrtForms(base, config, sample, exclude, tmp_dir)
                timed = config.mode == "auto" and config.objective != "size" and config.weight_bits != "4"
                if mode == "dynamic":
                    forms.dynamic(base, dst)
                    notes.append(f"dynamic int8, {_weights_note(config)}")
                    if timed and check is not None:  # auto without calibration data: dynamic, weighed all the same
                        notes += pick_by_speed(config.objective, src, dst, tmp_dir, check, None, None, float_timing)
                elif mode == "static":
                    forms.static(dst)
                    notes.append(f"static int8 {config.format}, {_calibration_note(config, sample)}")
                else:
                    check_set = check if check is not None else calib
                    passes = checker(work, check_set, (config.auto_min_cosine, config.auto_mean_cosine), on_check,
                                     check_reference if check is not None else None)
                    auto_notes, realize = choose(base, dst, check_set, passes, forms)
                    release_memory()  # the quantizers' graphs and the check's sessions
                    notes += [f"{n} ({passes.bounds})" if i == 0 else n for i, n in enumerate(auto_notes)]
                    if config.weight_bits == "auto" and config.objective == "size":
                        def realize_on(graph: Path, out: Path) -> None:  # auto's choice on a 4-bit graph
                            realize(OrtForms(graph, config, sample, exclude, tmp_dir, forms), out)
                        notes += choose_int4(work, dst, tmp_dir, config.int4_block, passes, exclude, realize_on,
                                             check_set, out_of_time)
                    elif config.weight_bits == "auto" and matmul_weight_names(onnx.load(str(work),
                                                                                       load_external_data=False)):
                        notes.append(f"objective {config.objective}: no 4-bit MatMul weights (ONNX Runtime's "
                                     "MatMulNBits computes in float32 on CPU; quantize.objective=size searches them)")
                    notes.append(f"auto: static parts {config.format}, {_calibration_note(config, sample)}")
                    release_memory()  # the graphs read for their node names
                    if timed:
                        notes += pick_by_speed(config.objective, src, dst, tmp_dir, check_set, passes,
                                               all_dynamic_writer(work, forms, exclude), float_timing)
                if judge is not None and check is not None:
                    release_memory()  # the timed sessions
                    by_auto = config.mode == "auto" and config.weight_bits != "4"
                    judge.result = judge_in_metric(
                        dst, src, check, judge.score, by_auto,
                        weight_only_writer(work, forms, exclude) if config.objective == "size" else None,
                        tmp_dir, judge.given_words, judge.always)
                    notes += judge.result.notes
        except (StageError, DataError):
            raise
        except Exception as exc:
            raise StageError(f"quantize: ONNX Runtime's quantizer failed ({first_line(exc)})") from exc
    return _unquantized_note(dst) + notes


HALF_TYPES = {onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BFLOAT16: "bfloat16"}


def _unquantized_note(dst: Path) -> list[str]:
    """A warning when the written graph has no int8 op because its weights are half precision, which ONNX Runtime's
    int8 quantizers do not read (they quantize float32 weights)."""
    graph = onnx.load(str(dst), load_external_data=False).graph  # read once: its weights' types and its ops
    kinds = {t.data_type for t in graph.initializer} & set(HALF_TYPES)
    if not kinds or any(n.op_type in INT8_OPS for n in graph.node):  # objective.quantized's test, on this graph
        return []
    names = "/".join(sorted(HALF_TYPES[k] for k in kinds))
    return [f"WARNING: no node was quantized: ONNX Runtime's int8 quantizers read float32 weights and this graph's "
            f"are {names}, so model.onnx is the {names} graph (export the model in float32 to quantize it)"]


PARITY_TOLERANCE = 1e-3  # relative to the outputs' largest magnitude: the same outputs, in the same order


def _float_outputs_on_val(ctx: StageContext) -> torch.Tensor | None:
    """The float graph's outputs on validation when the run already holds them: no stage changed the model (its
    validation outputs are the original's) and the graph's first output is torch's main output (the export's parity
    with torch, measured before this stage, holds). None: auto's check runs the float graph itself."""
    ref = ctx.val_reference
    if ref is None or ctx.model is not ctx.original or ctx.export_parity is None:
        return None
    return ref if ctx.export_parity <= PARITY_TOLERANCE * max(1.0, float(ref.abs().max())) else None


class QuantizeStage(ExportStage):
    name = "quantize"
    summary = ("int8 / 4-bit quantization of the exported graph with ONNX Runtime (auto: static where verified, "
               "else per op; by default within 1.1x of fp32's speed on this CPU; objective=size: 4-bit MatMul weights "
               "where verified; then judged in the run's metric)")
    Config = QuantizeConfig
    follows = frozenset({"shrink", "prune", "rpg", "basis"})

    def requires_calibration(self) -> str | None:
        if self.config.mode != "static":
            return None
        return ("static mode needs calibration samples: pass --train-data or --calib-data, or use --set "
                "quantize.mode=dynamic")

    @classmethod
    def default_targets(cls, weights, model) -> list[str]:
        """Weights ONNX Runtime's quantizer stores as int8 (those of MatMul/Gemm/Conv nodes)."""
        return [w.name for w in weights if w.is_matrix_weight]

    def apply_onnx(self, ctx: StageContext, src: Path, dst: Path, compact: bool = False) -> StageResult:
        """Quantize the graph at `src` into `dst`. `compact`: the export layer has already stored the structural
        stages' own compact tensors (rpg ring, basis coefficients) as int8 + scale with DequantizeLinear in the
        graph; ORT's quantizer then handles only the ordinary layers, without the pre-processing that would fold
        generated weights back to dense (docs/ALGORITHMS.md §5)."""
        with ctx.reporter.task("quantize: auto checks", None) as task:
            return self._apply_onnx(ctx, src, dst, compact, lambda how: task.advance(status=how))

    def _apply_onnx(self, ctx: StageContext, src: Path, dst: Path, compact: bool, on_check) -> StageResult:
        judge = self._judge(ctx, compact)
        if not compact:
            unchanged, timed = _float_outputs_on_val(ctx), {}
            notes = quantize_onnx(src, dst, self.config, ctx.calib, ctx.stage_seed, ctx.val, on_check,
                                  ctx.out_of_time, judge, unchanged, timed)
            return dataclasses.replace(self._result(ctx, notes, dst, judge), float_latency=timed.get("float"),
                                       latency_by_sha256=timed.get("by_sha256", {}))
        notes = ["compact tensors (ring / basis coefficients) stored as int8 with per-tensor scales"]
        try:
            graph = onnx.load(str(src))  # weights generated in-graph, and their generation, stay out of ORT's
            computed = computed_weight_nodes(graph) + constant_nodes(graph)
            cfg = dataclasses.replace(self.config, preprocess=False,
                                      exclude=tuple(self.config.exclude) + tuple(computed))
            notes += quantize_onnx(src, dst, cfg, ctx.calib, ctx.stage_seed, ctx.val, on_check, ctx.out_of_time, judge)
        except StageError as exc:
            copy_onnx(src, dst)
            notes.append(f"ORT quantizer skipped for the ordinary layers: {exc}")
        return self._result(ctx, notes, dst, judge)

    def _judge(self, ctx: StageContext, compact: bool) -> MetricJudge | None:
        """The quantized graph's outputs on validation judged in the run's metric within quantize's share of
        --max-drop (None without validation data). A compact graph (an rpg ring's or basis coefficients' int8 in
        ordinary ops) is judged even when ORT quantizes nothing else, and falls back to itself, not to float."""
        if ctx.val is None:
            return None
        budget = ctx.stage_budget(self.name, None)
        words = "the graph quantize was given (its ring / basis coefficients int8)" if compact else "the float graph"
        cfg = self.config  # auto's choice and objective=size's weight-only fallback: two looks (judge/looks.py)
        chances = 1 + (cfg.mode == "auto" and cfg.weight_bits != "4" and cfg.objective == "size")
        return MetricJudge(lambda outputs: ctx.judge(budget, outputs=outputs, chances=chances), words, always=compact)

    def _result(self, ctx: StageContext, notes: list[str], dst: Path, judge: MetricJudge | None) -> StageResult:
        """The shipped form, read from the written graph (of the ordinary layers: a ring or basis coefficients
        are int8 whatever it is), under the objective that chose it, or the run's metric when that overruled it."""
        judged = judge.result if judge is not None else None
        if judge is None:
            notes.append("not judged in the run's metric: no validation data (--train-data or --val-data); the gate "
                         "measures it on held-out")
        decision, headline = (judged.decision, judged.headline) if judged is not None else (None, None)
        outcome = Outcome(graph_form(dst), "run_metric" if headline else self.config.objective,
                          *((decision.drop, "points", decision.bound, decision.budget) if decision else ()))
        unquantized = next((n for n in notes if n.startswith("WARNING: no node was quantized")), None)
        return StageResult(model=ctx.model, notes=notes, decision=headline or unquantized or shipped_form(notes),
                           outcome=outcome)
