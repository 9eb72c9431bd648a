"""Verification: metrics on torch and ONNX Runtime outputs, the CI gates, measurements of the written artifacts."""
