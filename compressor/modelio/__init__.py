"""Formats in (load) and out (ONNX, safetensors with compressed encodings)."""
