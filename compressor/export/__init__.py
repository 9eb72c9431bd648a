"""Export: ONNX and int8 rewrites found by structure kind through the registry (`onnx.py`), and the matching
rebuild of the compressed form on load (`rebuild.py`)."""
