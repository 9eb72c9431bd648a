"""quantize's options: every field a documented default (`compress stages quantize` prints them)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from compressor.schema import option


@dataclass
class QuantizeConfig:
    mode: Literal["auto", "static", "dynamic"] = option(
        "auto", "auto: static where the check set's output stays within the cosine bounds, else per op dynamic "
        "or float (auto.py); static: int8 weights and activations (calibrated); dynamic: int8 weights, "
        "activations quantized at run time")
    auto_min_cosine: float = option(0.985, "auto: least per-sample cosine to the float graph on the check set (one "
                                    "output value a sample: max |error| / std <= sqrt(2 (1 - this)), auto.py)",
                                    ge=-1, le=1)
    auto_mean_cosine: float = option(0.995, "auto: least mean cosine to the float graph on the check set (one output "
                                     "value a sample: mse / variance <= 2 (1 - this), auto.py)", ge=-1, le=1)
    format: Literal["QDQ", "QOperator"] = option("QDQ", "graph format of static quantization")
    per_channel: bool = option(True, "one scale per output channel of each weight (else per tensor)")
    reduce_range: bool = option(True, "int8 weights in 7 bits ([-64, 64]), so x86 CPUs without VNNI (AVX2) compute "
                                "the same numbers as those with it (docs/ALGORITHMS.md §5); false: full 8 bits")
    calibration: Literal["MinMax", "Entropy", "Percentile"] = option("MinMax", "activation range estimator")
    percentile: float = option(99.999, "percentile kept by the Percentile calibrator", gt=0, le=100)
    calib_samples: int = option(256, "calibration samples drawn (seeded) from the calibration/training set",
                               ge=1)
    calib_batch: int = option(32, "largest batch fed to the calibrator (fewer samples where one batch's "
                              "activations would pass 128 MB: calibration.py)", ge=1)
    objective: Literal["balanced", "size", "latency"] = option(
        "balanced", "mode=auto, among the forms that hold the check (objective.py): balanced: int8 within 1.1x of "
        "the float graph's speed on this CPU, else the float graph; size: the smallest, 4-bit included, whatever its "
        "speed; latency: the fastest, the float graph included; every objective only among forms that then hold the "
        "run's metric on validation (judged.py)")
    weight_bits: Literal["auto", "8", "4"] = option(
        "auto", "auto: with mode=auto and objective=size, MatMul weights go 4-bit block-wise (weight-only) where the "
        "check set's output stays within the cosine bounds (int4.py), the rest int8; 8: never 4-bit; 4: every "
        "MatMul weight 4-bit, unchecked, in any mode")
    int4_block: int = option(32, "4-bit weights: input rows sharing one scale (a power of two, at least 16)",
                            ge=16)
    exclude: tuple[str, ...] = option((), "glob patterns of weight or node names left in float (e.g. fc3.*)")
    preprocess: bool = option(True, "ONNX Runtime's quantization pre-processing: basic graph optimisation, then "
                                    "shape inference (quant_pre_process's steps, file to file)")

    def validate(self) -> str | None:
        """What the fields' ranges cannot say alone."""
        if self.objective == "latency" and (self.mode != "auto" or self.weight_bits == "4"):
            return ("objective=latency chooses among auto's checked forms: it needs mode=auto and weight_bits other "
                    "than 4")
        if self.int4_block & (self.int4_block - 1):
            return "int4_block must be a power of two, at least 16"
        return None
