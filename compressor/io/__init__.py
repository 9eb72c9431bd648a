"""Formats in (load, data) and out (ONNX export, safetensors with compressed encodings); running a model on data."""
