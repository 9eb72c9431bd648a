"""Measuring the written artifacts, after export: bytes, latency and peak memory (artifacts.py) and the CI gates
on the final numbers (gates.py). Judging candidates during the pipeline lives in `compressor.judge`."""
