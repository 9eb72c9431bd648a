"""quantize: int8 post-training quantization of the exported ONNX graph through ONNX Runtime's quantizer.

Not from the papers; the field's standard (docs/ALGORITHMS.md §5). Static int8 with calibration samples from the
training (or calibration) set, never the held-out set (MinMax / Entropy / Percentile), per-channel weights by
default; or dynamic (weight-only) int8. QDQ or QOperator format. Weights are stored as int8 initializers
(no QDQ pair on weights), so the file really shrinks. Its metric is measured by running the quantized model in
ONNX Runtime. Export-time: always the last stage.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import io
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import onnx

from compressor.algorithms.quantize.auto import checker, choose
from compressor.algorithms.quantize.int4 import choose_int4
from compressor.errors import DataError, StageError
from compressor.io.data import Dataset, calibration_subset
from compressor.registry import register_stage
from compressor.stage import Stage, StageResult, option


@dataclass
class QuantizeConfig:
    mode: Literal["auto", "static", "dynamic"] = option(
        "auto", "auto: static where the check set's output stays within the cosine bounds, else per op dynamic "
        "or float (auto.py); static: int8 weights and activations (calibrated); dynamic: int8 weights, "
        "activations quantized at run time")
    auto_min_cosine: float = option(0.985, "auto: least per-sample cosine to the float graph on the check set")
    auto_mean_cosine: float = option(0.995, "auto: least mean cosine to the float graph on the check set")
    format: Literal["QDQ", "QOperator"] = option("QDQ", "graph format of static quantization")
    per_channel: bool = option(True, "one scale per output channel of each weight (else per tensor)")
    calibration: Literal["MinMax", "Entropy", "Percentile"] = option("MinMax", "activation range estimator")
    percentile: float = option(99.999, "percentile kept by the Percentile calibrator")
    calib_samples: int = option(256, "calibration samples drawn (seeded) from the calibration/training set")
    calib_batch: int = option(32, "batch size fed to the calibrator")
    weight_bits: Literal["auto", "8", "4"] = option(
        "auto", "auto: with mode=auto, MatMul weights go 4-bit block-wise (weight-only) where the check set's output "
        "stays within the cosine bounds (int4.py), the rest int8; 8: never 4-bit; 4: every MatMul weight 4-bit, "
        "unchecked, in any mode")
    int4_block: int = option(32, "4-bit weights: input rows sharing one scale (a power of two, at least 16)")
    exclude: tuple[str, ...] = option((), "glob patterns of weight or node names left in float (e.g. fc3.*)")
    preprocess: bool = option(True, "run ONNX Runtime's quant_pre_process (shape inference, graph optimisation)")

    def validate(self) -> str | None:
        if self.calib_samples < 1:
            return "calib_samples must be at least 1"
        if self.calib_batch < 1:
            return "calib_batch must be at least 1"
        if not (-1 <= self.auto_min_cosine <= 1 and -1 <= self.auto_mean_cosine <= 1):
            return "auto_min_cosine and auto_mean_cosine must be in [-1, 1]"
        if self.int4_block < 16 or self.int4_block & (self.int4_block - 1):
            return "int4_block must be a power of two, at least 16"
        if not 0 < self.percentile <= 100:
            return "percentile must be in (0, 100]"
        return None


class _Reader:
    """ONNX Runtime CalibrationDataReader over a Dataset."""

    def __init__(self, data: Dataset, input_names: list[str], batch: int) -> None:
        self._batches = [
            {n: v.numpy() for n, v in zip(input_names, b.inputs.values())} for b in data.batches(batch)
        ]
        self._it = iter(self._batches)

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._batches)


def nodes_matching(model: onnx.ModelProto, patterns: tuple[str, ...]) -> list[str]:
    """Names of nodes whose name, or one of whose weight initializers' names, matches a pattern."""
    if not patterns:
        return []
    inits = {i.name for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        names = [node.name] + [i for i in node.input if i in inits]
        if any(fnmatch.fnmatchcase(n, p) for n in names for p in patterns):
            out.append(node.name)
    return out


WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def computed_weight_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of Conv/Gemm/MatMul nodes whose weight is computed in the graph (an RPG ring's or a basis stack's
    generated weights): quantizing those with ORT would add Q/DQ pairs around activations and weights that
    cost more bytes than they save, so they are left to the structure's own int8 rewrite."""
    inits = {i.name for i in model.graph.initializer}
    consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node
            if n.op_type in WEIGHTED_OPS and len(n.input) > 1 and n.input[1] not in inits | consts]


@contextlib.contextmanager
def _quiet():
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def _ort_calls(work: Path, config: QuantizeConfig, calib: Dataset | None, seed: int, exclude: list[str]):
    """(static(dst, nodes), dynamic(src, dst, nodes), calibration note) bound to this config: `nodes` None means
    every node ORT quantizes (less `exclude`), a list means exactly those."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    extra = {"WeightSymmetric": True}
    if config.calibration == "Percentile":
        extra["CalibPercentile"] = config.percentile
    sample = calibration_subset(calib, config.calib_samples, seed) if calib is not None else None
    names = [i.name for i in onnx.load(str(work)).graph.input]

    def static(dst: Path, nodes: list[str] | None = None) -> None:
        quantize_static(str(work), str(dst), _Reader(sample, names, config.calib_batch),
                        quant_format=QuantFormat.QDQ if config.format == "QDQ" else QuantFormat.QOperator,
                        per_channel=config.per_channel, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=getattr(CalibrationMethod, config.calibration),
                        nodes_to_quantize=nodes, nodes_to_exclude=exclude, extra_options=dict(extra))

    def dynamic(src: Path, dst: Path, nodes: list[str] | None = None) -> None:
        quantize_dynamic(str(src), str(dst), per_channel=config.per_channel, weight_type=QuantType.QInt8,
                         nodes_to_quantize=nodes, nodes_to_exclude=exclude,
                         extra_options={"MatMulConstBOnly": True, **extra})

    note = sample and (f"{config.calibration} calibration on {len(sample)} samples from {sample.source}, "
                       f"{'per-channel' if config.per_channel else 'per-tensor'} weights")
    return static, dynamic, note


def _mixed(work: Path, static, dynamic, tmp: Path):
    """auto's per-op quantizer: static QDQ on some weighted nodes, then dynamic int8 on others."""
    def run(dst: Path, static_nodes: list[str], dynamic_nodes: list[str], tables: list[str]) -> None:
        mid = work
        if static_nodes:
            mid = tmp / "static.onnx"
            static(mid, static_nodes)
        if dynamic_nodes or tables:
            dynamic(mid, dst, dynamic_nodes + tables)
        else:
            dst.write_bytes(mid.read_bytes())
    return run


def quantize_onnx(src: Path, dst: Path, config: QuantizeConfig, calib: Dataset | None, seed: int,
                  check: Dataset | None = None, on_check: Callable[[str], None] | None = None) -> list[str]:
    """Quantize `src` into `dst` with ONNX Runtime; returns notes for the report. `check` (validation data, never
    held-out) is what mode=auto verifies its choices on; the calibration set stands in when it is None.
    `on_check` hears the result of each of auto's checks (progress on a long model)."""
    from onnxruntime.quantization import quant_pre_process

    notes = []
    with tempfile.TemporaryDirectory(prefix="compressor-q-") as tmp:
        work = Path(tmp) / "model.onnx"
        try:
            with _quiet():
                if config.preprocess:
                    quant_pre_process(str(src), str(work), skip_symbolic_shape=True)
                else:
                    work.write_bytes(src.read_bytes())
                model = onnx.load(str(work))
                exclude = nodes_matching(model, config.exclude)
                if config.exclude and not exclude:
                    raise StageError(f"quantize: exclude patterns {list(config.exclude)} match no node or weight")
                if exclude:
                    notes.append(f"left in float: {', '.join(exclude)}")
                mode = config.mode
                if mode == "auto" and calib is None:
                    notes.append("auto: no calibration data (--train-data or --calib-data), so dynamic int8")
                    mode = "dynamic"
                if mode == "static" and calib is None:
                    raise DataError("quantize: static mode needs calibration samples: pass --train-data or "
                                    "--calib-data, or use --set quantize.mode=dynamic")
                check_set = check if check is not None else calib
                passes = checker(work, check_set, (config.auto_min_cosine, config.auto_mean_cosine), on_check) \
                    if mode == "auto" else None
                base = work
                if config.weight_bits == "4" or (config.weight_bits == "auto" and mode == "auto"):
                    four = Path(tmp) / "int4.onnx"
                    used, int4_notes = choose_int4(work, four, config.int4_block, passes, exclude,
                                                   forced=config.weight_bits == "4")
                    notes += int4_notes
                    base = four if used else work
                static, dynamic, calib_note = _ort_calls(base, config, calib, seed, exclude)
                if mode == "dynamic":
                    dynamic(base, dst)
                    notes.append(f"dynamic int8, {'per-channel' if config.per_channel else 'per-tensor'} weights")
                elif mode == "static":
                    static(dst)
                    notes.append(f"static int8 {config.format}, {calib_note}")
                else:
                    notes += choose(base, dst, check_set, (config.auto_min_cosine, config.auto_mean_cosine), passes,
                                    static, _mixed(base, static, dynamic, Path(tmp)), everything_first=base is work)
                    notes.append(f"auto: static parts {config.format}, {calib_note}")
        except (StageError, DataError):
            raise
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise StageError(f"quantize: ONNX Runtime's quantizer failed ({type(exc).__name__}: {msg})") from exc
    return notes


@register_stage
class QuantizeStage(Stage):
    name = "quantize"
    summary = "int8 quantization of the exported graph with ONNX Runtime (auto: static where verified, else per op)"
    Config = QuantizeConfig
    follows = frozenset({"shrink", "prune", "rpg", "basis"})
    export_time = True

    @classmethod
    def default_targets(cls, weights, model) -> list[str]:
        """Weights ONNX Runtime's quantizer stores as int8 (those of MatMul/Gemm/Conv nodes)."""
        return [w.name for w in weights if w.is_matrix_weight]

    def apply_onnx(self, ctx, src: Path, dst: Path, compact: bool = False) -> StageResult:
        """Quantize the graph at `src` into `dst`. `compact`: the export layer has already stored the structural
        stages' own compact tensors (rpg ring, basis coefficients) as int8 + scale with DequantizeLinear in the
        graph; ORT's quantizer then handles only the ordinary layers, without the pre-processing that would fold
        generated weights back to dense (docs/ALGORITHMS.md §5)."""
        with ctx.reporter.task("quantize: auto checks", None) as task:
            return self._apply_onnx(ctx, src, dst, compact, lambda how: task.advance(status=how))

    def _apply_onnx(self, ctx, src: Path, dst: Path, compact: bool, on_check) -> StageResult:
        if not compact:
            notes = quantize_onnx(src, dst, self.config, ctx.calib, ctx.stage_seed, ctx.val, on_check)
            return StageResult(model=ctx.model, notes=notes)
        notes = ["compact tensors (ring / basis coefficients) stored as int8 with per-tensor scales"]
        try:
            computed = computed_weight_nodes(onnx.load(str(src)))  # weights generated in-graph stay out of ORT's
            cfg = dataclasses.replace(self.config, preprocess=False,
                                      exclude=tuple(self.config.exclude) + tuple(computed))
            notes += quantize_onnx(src, dst, cfg, ctx.calib, ctx.stage_seed, ctx.val, on_check)
        except StageError as exc:
            dst.write_bytes(src.read_bytes())
            notes.append(f"ORT quantizer skipped for the ordinary layers: {exc}")
        return StageResult(model=ctx.model, notes=notes)
