"""ONNX Runtime's static and dynamic int8 quantizers and our int8 weight-only rewrite, bound to one float graph:
the forms auto.py chooses between, node by node (docs/ALGORITHMS.md §5)."""
from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import onnx

from compressor.algorithms.quantize.calibration import CalibrationReader, calibration_batch
from compressor.algorithms.quantize.config import QuantizeConfig
from compressor.algorithms.quantize.gemm import gemms_as_matmul
from compressor.algorithms.quantize.int4 import matmul_weight_names, write_nbits
from compressor.algorithms.quantize.weight_only import int8_weight_only
from compressor.errors import DataError
from compressor.io.data import Dataset
from compressor.io.onnx_files import external_data_path
from compressor.runtime.memory import release_memory

WEIGHT_ONLY_BLOCK = 128  # 8-bit weight-only MatMul: one scale per 128 input rows (3% over int8; rounding is fine)


_INSTANCES = itertools.count()
# quantize_static's extra options that it hands to its calibrator, by the calibrator's own names (ORT quantize.py)
CALIB_OPTIONS = (("CalibTensorRangeSymmetric", "symmetric"), ("CalibMovingAverage", "moving_average"),
                 ("CalibMovingAverageConstant", "averaging_constant"),
                 ("CalibMaxIntermediateOutputs", "max_intermediate_outputs"), ("CalibPercentile", "percentile"))


class OrtForms:
    """ONNX Runtime's static and dynamic int8 quantizers and our int8 weight-only rewrite, bound to one graph `base`
    and this config (auto.Forms): `nodes` None means every node ORT quantizes (less `exclude`). Static forms all
    calibrate `base` alike, so ORT's calibration cache computes the ranges once. `ranges_of`: another instance whose
    cached ranges this one reuses (the 4-bit step's graphs: their MatMulNBits outputs keep the float MatMuls' names,
    and their activations differ from the float graph's by the 4-bit rounding that auto's check then measures), so
    each of the step's tries quantizes without calibrating again."""

    def __init__(self, base: Path, config: QuantizeConfig, sample: Dataset | None, exclude: list[str],
                 tmp: Path, ranges_of: "OrtForms | None" = None) -> None:
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
        cfg, model = self.config, onnx.load(str(self.base), load_external_data=False)  # names and shapes
        names, batch = [i.name for i in model.graph.input], calibration_batch(model, cfg.calib_batch)
        del model
        method = getattr(CalibrationMethod, cfg.calibration)
        if not self.cache.exists():
            self._calibrate(names, batch, method)
        quantize_static(str(self.base), str(dst), CalibrationReader(self.sample, names, batch),
                        quant_format=QuantFormat.QDQ if cfg.format == "QDQ" else QuantFormat.QOperator,
                        per_channel=cfg.per_channel, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=method,
                        reduce_range=cfg.reduce_range,
                        nodes_to_quantize=nodes, nodes_to_exclude=self.exclude, extra_options=dict(self.extra),
                        calibration_cache_path=self.cache)

    def _calibrate(self, names: list[str], batch: int, method) -> None:
        """ONNX Runtime's own calibrator, with the op types, method and options quantize_static would give it, run
        before the quantizer: its ranges go to the cache that quantize_static then reads, so the calibrator's
        copies of the graph and its session are freed before the quantizer loads its own copy, instead of living
        beside it (a BERT-base-sized encoder: 0.4 GB less at the peak, the same ranges)."""
        from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

        options = {key: self.extra[name] for name, key in CALIB_OPTIONS if name in self.extra}
        with tempfile.TemporaryDirectory(prefix="calibration-", dir=self.tmp) as tmp:
            calibrator = create_calibrator(self.base, list(set(QLinearOpsRegistry) | set(QDQRegistry)),
                                           augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                           calibrate_method=method, extra_options=options,
                                           use_external_data_format=external_data_path(self.base).exists())
            calibrator.collect_data(CalibrationReader(self.sample, names, batch))
            ranges = calibrator.compute_data()
            del calibrator
        save_tensors_data(ranges, self.cache, smooth_quant=False)
        release_memory()

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
