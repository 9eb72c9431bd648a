"""quantize: int8 of the exported graph through ONNX Runtime's quantizer (export-time, always last)."""
from compressor.algorithms.quantize.stage import QuantizeConfig, QuantizeStage

__all__ = ["QuantizeConfig", "QuantizeStage"]
