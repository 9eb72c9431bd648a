"""Returning freed memory to the operating system between a run's phases.

Why: an ONNX Runtime session or a protobuf graph of a 100M-parameter model frees hundreds of megabytes at once, but
glibc keeps freed heap pages mapped for reuse, so the process's resident size stays at its high-water mark and the
next phase (the quantizer's copies, the artifact's reload) stacks on top of it. `malloc_trim(0)` hands the free
pages back (glibc 2.8+); elsewhere (musl, macOS, Windows) nothing is returned.
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


def release_memory(collect: bool = False) -> None:
    """Give the heap's free pages back to the OS where libc can (a fraction of a millisecond). `collect`: first
    collect unreachable reference cycles (about 0.1 s in a process that has imported torch: only where a phase
    leaves cycles behind, e.g. the exporter's traces of a large model); what plain reference counting frees (an
    ORT session, a graph proto) needs no collection."""
    if collect:
        gc.collect()
    trim = _libc_trim()
    if trim is not None:
        trim(0)
