"""Returning freed memory to the operating system between a run's phases.

Why: an ONNX Runtime session or a protobuf graph of a 100M-parameter model frees hundreds of megabytes at once, but
glibc keeps freed heap pages mapped for reuse, so the process's resident size stays at its high-water mark and the
next phase (the quantizer's copies, the artifact's reload) stacks on top of it. `malloc_trim(0)` hands the free
pages back (glibc 2.8+); elsewhere (musl, macOS, Windows) only the garbage collection runs.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
from functools import cache


@cache
def _libc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_memory() -> None:
    """Collect unreachable objects, then give the heap's free pages back to the OS where libc can."""
    gc.collect()
    trim = _libc_trim()
    if trim is not None:
        trim(0)
