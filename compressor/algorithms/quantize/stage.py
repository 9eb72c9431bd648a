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
import itertools
import logging
import tempfile
from pathlib import Path
from typing import Callable

import onnx

from compressor.algorithms.quantize.auto import checker, choose
from compressor.algorithms.quantize.calibration import CalibrationReader, calibration_batch
from compressor.algorithms.quantize.config import QuantizeConfig
from compressor.algorithms.quantize.gemm import gemms_as_matmul
from compressor.algorithms.quantize.judged import MetricJudge, judge_in_metric, weight_only_writer
from compressor.algorithms.quantize.int4 import choose_int4, force_int4, matmul_weight_names, write_nbits
from compressor.algorithms.quantize.left_out import computed_weight_nodes, constant_nodes, nodes_matching
from compressor.algorithms.quantize.objective import all_dynamic_writer, graph_form, pick_by_speed, shipped_form
from compressor.algorithms.quantize.weight_only import int8_weight_only
from compressor.core.contract import StageContext
from compressor.errors import DataError, StageError
from compressor.io.data import Dataset, calibration_subset
from compressor.io.onnx_files import external_data_path
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


WEIGHT_ONLY_BLOCK = 128  # 8-bit weight-only MatMul: one scale per 128 input rows (3% over int8; rounding is fine)


_INSTANCES = itertools.count()


class _Forms:
    """ONNX Runtime's static and dynamic int8 quantizers and our int8 weight-only rewrite, bound to one graph `base`
    and this config (auto.Forms): `nodes` None means every node ORT quantizes (less `exclude`). Static forms all
    calibrate `base` alike, so ORT's calibration cache computes the ranges once. `ranges_of`: another instance whose
    cached ranges this one reuses (the 4-bit step's graphs: their MatMulNBits outputs keep the float MatMuls' names,
    and their activations differ from the float graph's by the 4-bit rounding that auto's check then measures), so
    each of the step's tries quantizes without calibrating again."""

    def __init__(self, base: Path, config: QuantizeConfig, sample: Dataset | None, exclude: list[str],
                 tmp: Path, ranges_of: "_Forms | None" = None) -> None:
        self.base, self.config, self.sample, self.exclude, self.tmp = base, config, sample, exclude, tmp
        self.cache = ranges_of.cache if ranges_of is not None else tmp / f"calibration-{next(_INSTANCES)}.json"
        self.extra = {"WeightSymmetric": True}
        if config.calibration == "Percentile":
            self.extra["CalibPercentile"] = config.percentile

    def static(self, dst: Path, nodes: list[str] | None = None) -> None:
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        if self.sample is None:
            raise DataError("quantize: static mode needs calibration samples: pass --train-data or --calib-data, "
                            "or use --set quantize.mode=dynamic")
        cfg, model = self.config, onnx.load(str(self.base))
        names, batch = [i.name for i in model.graph.input], calibration_batch(model, cfg.calib_batch)
        del model
        quantize_static(str(self.base), str(dst), CalibrationReader(self.sample, names, batch),
                        quant_format=QuantFormat.QDQ if cfg.format == "QDQ" else QuantFormat.QOperator,
                        per_channel=cfg.per_channel, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=getattr(CalibrationMethod, cfg.calibration),
                        reduce_range=cfg.reduce_range,
                        nodes_to_quantize=nodes, nodes_to_exclude=self.exclude, extra_options=dict(self.extra),
                        calibration_cache_path=self.cache)

    def dynamic(self, src: Path, dst: Path, nodes: list[str] | None = None) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        src = self._as_matmul(src, nodes)  # ORT has no dynamic Gemm kernel: as MatMul + Add it quantizes them
        quantize_dynamic(str(src), str(dst), per_channel=self.config.per_channel, weight_type=QuantType.QInt8,
                         reduce_range=self.config.reduce_range,
                         nodes_to_quantize=nodes, nodes_to_exclude=self.exclude,
                         extra_options={"MatMulConstBOnly": True, **self.extra})

    def _as_matmul(self, src: Path, nodes: list[str] | None) -> Path:
        """`src` with the Gemms among `nodes` (None: all) as MatMul + Add (gemm.py), or `src` if there are none."""
        graph, rewritten = gemms_as_matmul(onnx.load(str(src)), nodes)
        if not rewritten:
            return src
        dst = self.tmp / f"gemm_as_matmul_{src.stem}.onnx"
        onnx.save(graph, str(dst))
        return dst

    def static_all(self, dst: Path) -> None:
        self.static(dst)

    def mixed(self, dst: Path, static: list[str], dynamic: list[str], weight_only: list[str],
              tables: list[str]) -> None:
        # the dynamic and weight-only nodes as MatMul first: ORT's dynamic pass renames every Gemm it leaves (to
        # "<name>_MatMul"), and the weight-only list would then match nothing and stay float
        mid = self._as_matmul(self.base, dynamic + tables + weight_only) if dynamic or tables else self.base
        if static:
            mid = self.tmp / "static.onnx"
            self.static(mid, static)
        if dynamic or tables:
            self.dynamic(mid, self.tmp / "dynamic.onnx", dynamic + tables)
            mid = self.tmp / "dynamic.onnx"
        weight_only = [n for n in weight_only if n not in self.exclude]
        matmuls = [n for n in weight_only if n in matmul_weight_names(onnx.load(str(mid)))]
        if matmuls:  # 8-bit MatMulNBits: a DequantizeLinear + MatMul pair would be fused by ORT into one that
            write_nbits(mid, self.tmp / "nbits8.onnx", matmuls, WEIGHT_ONLY_BLOCK, bits=8)  # quantizes activations
            mid = self.tmp / "nbits8.onnx"
        onnx.save(int8_weight_only(onnx.load(str(mid)), [n for n in weight_only if n not in matmuls]), str(dst))


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
                  out_of_time: Callable[[], bool] | None = None, judge: MetricJudge | None = None) -> list[str]:
    """Quantize `src` into `dst` with ONNX Runtime; returns notes for the report. `check` (validation data, never
    held-out) is what mode=auto verifies its choices on; the calibration set stands in when it is None.
    `on_check` hears the result of each of auto's checks (progress on a long model); `out_of_time` (--time-limit)
    ends the 4-bit step's search, keeping the int8 choice or the last 4-bit set that held. `judge` scores outputs on
    `check` in the run's metric against quantize's budget and keeps its result (judged.py); None: not judged."""
    from onnxruntime.quantization import quant_pre_process

    notes = []
    with tempfile.TemporaryDirectory(prefix="compressor-q-") as tmp:
        work = Path(tmp) / "model.onnx"
        try:
            with _quiet():
                if config.preprocess:
                    quant_pre_process(str(src), str(work), skip_symbolic_shape=True,
                                      save_as_external_data=external_data_path(src).exists())
                else:
                    work.write_bytes(src.read_bytes())
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
                forms = _Forms(base, config, sample, exclude, tmp_dir)
                timed = config.mode == "auto" and config.objective != "size" and config.weight_bits != "4"
                if mode == "dynamic":
                    forms.dynamic(base, dst)
                    notes.append(f"dynamic int8, {_weights_note(config)}")
                    if timed and check is not None:  # auto without calibration data: dynamic, weighed all the same
                        notes += pick_by_speed(config.objective, src, dst, tmp_dir, check, None, None)
                elif mode == "static":
                    forms.static(dst)
                    notes.append(f"static int8 {config.format}, {_calibration_note(config, sample)}")
                else:
                    check_set = check if check is not None else calib
                    passes = checker(work, check_set, (config.auto_min_cosine, config.auto_mean_cosine), on_check)
                    auto_notes, realize = choose(base, dst, check_set, passes, forms)
                    notes += [f"{n} ({passes.bounds})" if i == 0 else n for i, n in enumerate(auto_notes)]
                    if config.weight_bits == "auto" and config.objective == "size":
                        notes += choose_int4(work, dst, tmp_dir, config.int4_block, passes, exclude,
                                             lambda b, d: realize(_Forms(b, config, sample, exclude, tmp_dir, forms), d),
                                             check_set, out_of_time)
                    elif config.weight_bits == "auto" and matmul_weight_names(onnx.load(str(work),
                                                                                       load_external_data=False)):
                        notes.append(f"objective {config.objective}: no 4-bit MatMul weights (ONNX Runtime's "
                                     "MatMulNBits computes in float32 on CPU; quantize.objective=size searches them)")
                    notes.append(f"auto: static parts {config.format}, {_calibration_note(config, sample)}")
                    if timed:
                        notes += pick_by_speed(config.objective, src, dst, tmp_dir, check_set, passes,
                                               all_dynamic_writer(work, forms, exclude))
                if judge is not None and check is not None:
                    by_auto = config.mode == "auto" and config.weight_bits != "4"
                    judge.result = judge_in_metric(
                        dst, src, check, judge.score, by_auto,
                        weight_only_writer(work, forms, exclude) if config.objective == "size" else None,
                        tmp_dir, judge.given_words, judge.always)
                    notes += judge.result.notes
        except (StageError, DataError):
            raise
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise StageError(f"quantize: ONNX Runtime's quantizer failed ({type(exc).__name__}: {msg})") from exc
    return notes


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
            notes = quantize_onnx(src, dst, self.config, ctx.calib, ctx.stage_seed, ctx.val, on_check,
                                  ctx.out_of_time, judge)
            return self._result(ctx, notes, dst, judge)
        notes = ["compact tensors (ring / basis coefficients) stored as int8 with per-tensor scales"]
        try:
            graph = onnx.load(str(src))  # weights generated in-graph, and their generation, stay out of ORT's
            computed = computed_weight_nodes(graph) + constant_nodes(graph)
            cfg = dataclasses.replace(self.config, preprocess=False,
                                      exclude=tuple(self.config.exclude) + tuple(computed))
            notes += quantize_onnx(src, dst, cfg, ctx.calib, ctx.stage_seed, ctx.val, on_check, ctx.out_of_time, judge)
        except StageError as exc:
            dst.write_bytes(src.read_bytes())
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
        return StageResult(model=ctx.model, notes=notes, decision=headline or shipped_form(notes), outcome=outcome)
