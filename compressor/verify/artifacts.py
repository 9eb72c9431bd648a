"""Measure what was written: bytes (raw and gzip), the metric of each artifact loaded back, ORT latency."""
from __future__ import annotations

import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
from torch import nn

from compressor.export.onnx import export_model
from compressor.io.data import Dataset
from compressor.io.onnx_files import external_data_path, save_onnx
from compressor.io.safetensors_io import save_weights
from compressor.runtime.calls import ort_session
from compressor.runtime.timing import LATENCY_BATCH, SLOWER_MARGIN, latency_batch, ort_latency_spread_ms

CHUNK = 1 << 24


def gzip_size(path: Path) -> int:
    """Bytes of `gzip.compress(file, 9, mtime=0)`, compressed a chunk at a time (the same stream: deflate's output
    does not depend on how its input is fed), so a large file is never held in memory."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    size = 10 + 8  # gzip header (no name, mtime 0) and trailer (crc32, length)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            size += len(deflate.compress(chunk))
    return size + len(deflate.flush())


_MEASURED: dict[tuple, dict[str, int]] = {}  # (path, inode, size, mtime) -> sizes: a file is gzipped once


def file_sizes(path: Path) -> dict[str, int]:
    """Raw and gzip bytes of a written file, with its ONNX external data file if it has one."""
    files = [path] + [f for f in [external_data_path(path)] if f.exists()]
    key = tuple((str(f), f.stat().st_ino, f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _MEASURED:
        raw = sum(f.stat().st_size for f in files)
        gz = sum(gzip_size(f) for f in files)
        _MEASURED.clear()  # only the latest file is asked for twice (a stage's record, then the artifact's)
        _MEASURED[key] = {"bytes": raw, "gzip_bytes": gz, "size": min(raw, gz)}
    return dict(_MEASURED[key])


def file_sizes_later(path: Path) -> Callable[[], dict[str, int]]:
    """`file_sizes(path)` on a background thread (zlib releases the GIL, so a large file's gzip pass uses a core
    the run leaves idle, e.g. while the exporter traces); call the result to wait for it. The file must stay."""
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(file_sizes, path)
    pool.shutdown(wait=False)
    return future.result


def stored_bytes_later(model: nn.Module) -> Callable[[], int]:
    """Size of the model's weights as compressor stores them (encoded safetensors; smallest of raw and gzip),
    measured from a file actually written now, its gzip pass on a background thread; call the result for it."""
    tmp = tempfile.TemporaryDirectory(prefix="compressor-sz-")
    path = Path(tmp.name) / "w.safetensors"
    try:
        save_weights(model.state_dict(), path, {})
    except BaseException:
        tmp.cleanup()
        raise
    sizes = file_sizes_later(path)

    def result() -> int:
        try:
            return sizes()["size"]
        finally:
            tmp.cleanup()
    return result


def baseline_latency_ms(ctx, data: Dataset, fp32_session, tmp: Path) -> tuple[float, list[float]]:
    """ORT latency of the original (uncompressed) model and its [p10, p90], measured the same way as each
    artifact. Without a structural stage the compressed model's fp32 export is the original graph (same ops and
    shapes; pruned zeros are stored densely), so its session is timed; otherwise the original model is exported
    and timed."""
    if not ctx.structures:
        return ort_latency_spread_ms(fp32_session, data)
    path = tmp / "original.fp32.onnx"
    save_onnx(export_model(ctx.original, data.example(), str(ctx.device), []), path)
    return ort_latency_spread_ms(ort_session(path), data)


def slower_warnings(artifacts: list[dict], baseline_ms: float, margin: float = SLOWER_MARGIN) -> list[str]:
    """A warning per artifact slower than the fp32 original by more than `margin` (timing noise of a median)."""
    return [f"WARNING: {a['path']} runs slower than the fp32 original in ONNX Runtime: {a['latency_ms']:.3f} ms vs "
            f"{baseline_ms:.3f} ms (batch {LATENCY_BATCH}); it saves bytes, not time"
            for a in artifacts if a.get("latency_ms") is not None and a["latency_ms"] > baseline_ms * margin]


def ort_peak_memory_bytes(path: Path, data: Dataset) -> int | None:
    """Peak resident memory (whole process, Python and ORT included) of a fresh process that loads the model
    and runs one batch-64 inference; compare artifacts by difference."""
    import subprocess
    import sys
    import tempfile

    batch = latency_batch(data)
    with tempfile.TemporaryDirectory(prefix="compressor-mem-") as tmp:
        inputs = Path(tmp) / "inputs.npz"
        np.savez(inputs, **{k: v.numpy() for k, v in batch.inputs.items()})
        code = (
            "import sys,numpy as np,onnxruntime as ort\n"
            "s=ort.InferenceSession(sys.argv[1],providers=['CPUExecutionProvider'])\n"
            "d=np.load(sys.argv[2]);names=[i.name for i in s.get_inputs()]\n"
            "feed={n:d[n] for n in names} if set(names)==set(d.files) else dict(zip(names,[d[k] for k in d.files]))\n"
            "s.run(None,feed)\n"
            "print([int(l.split()[1])*1024 for l in open('/proc/self/status') if l.startswith('VmHWM')][0])\n"
        )
        try:
            out = subprocess.run([sys.executable, "-c", code, str(path), str(inputs)], capture_output=True,
                                 text=True, timeout=120, check=True)
            return int(out.stdout.strip().splitlines()[-1])
        except Exception:
            return None
