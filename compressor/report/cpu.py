"""The CPU a run's numbers were measured on: its model and the instruction-set features that change what ONNX
Runtime's int8 kernels compute or how fast they run (x86: AVX2, AVX-512, VNNI, AMX; ARM: dot product, i8mm).

ONNX Runtime picks its integer kernels by these features, and on x86 without VNNI its u8s8 kernels can saturate
(docs/ALGORITHMS.md §5), so report.json records them beside every latency and accuracy it claims.
"""
from __future__ import annotations

import platform
from pathlib import Path

INT8_FEATURES = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8",  # x86
                 "asimd", "asimddp", "i8mm", "sve")                                   # ARM (Linux names)


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """{"cpu": model name, "cpu_features": the int8-relevant features present, space-separated}; "unknown" where
    the platform does not say (no /proc/cpuinfo)."""
    model, flags = platform.processor() or "unknown", None
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and model in ("unknown", "", platform.machine()):
            model = value.strip() or model
        elif key in ("flags", "features") and flags is None:
            flags = set(value.split())
    features = "unknown" if flags is None else " ".join(f for f in INT8_FEATURES if f in flags) or "none"
    return {"cpu": f"{model} ({platform.machine()})", "cpu_features": features}
