"""Running models: torch calls and ONNX Runtime sessions, their timing, the thread count, data-parallel ranks."""
