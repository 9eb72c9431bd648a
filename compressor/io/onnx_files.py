"""ONNX files on disk: written atomically and checked by the full `onnx.checker`, copied with their external data,
and read for what their graph computes at run time (a dynamic-int8 graph's outputs depend on the batch).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import onnx

from compressor.errors import OutputError, StageError

EXTERNAL_DATA_BYTES = 2**31 - 2**26  # weights above this go to `<name>.data` beside the file (protobuf's 2 GB limit)


def initializer_bytes(proto: onnx.ModelProto) -> int:
    """Bytes of the graph's initializers, from their shapes and types (no tensor copied)."""
    total = 0
    for t in proto.graph.initializer:
        n = int(np.prod(t.dims, dtype=np.int64)) if len(t.dims) else 1
        total += n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize if t.data_type else 0
    return total


def external_data_path(path: Path) -> Path:
    """Where the weights of a graph too large for one protobuf are written: `model.onnx` -> `model.onnx.data`."""
    return path.with_name(path.name + ".data")


def save_onnx(proto: onnx.ModelProto, path: Path) -> None:
    """Write the graph atomically, then run the full `onnx.checker` on the written file (so no second serialized
    copy is made in memory). One self-contained file; a graph whose weights pass EXTERNAL_DATA_BYTES keeps them in
    `external_data_path(path)` (ONNX external data, read by ONNX Runtime and `onnx.load` from the same folder);
    then `proto` no longer holds them (a large graph is not kept twice)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if initializer_bytes(proto) > EXTERNAL_DATA_BYTES:
            data = external_data_path(path)
            data.unlink(missing_ok=True)
            onnx.save_model(proto, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data.name, size_threshold=1024)  # moves the proto's weights to the file
        else:
            write_bytes_atomic(tmp, proto.SerializeToString())
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except Exception as exc:
            raise StageError(f"exported ONNX model fails onnx.checker: {str(exc).splitlines()[0][:200]}") from exc
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def copy_onnx(src: Path, dst: Path) -> None:
    """Copy a graph written by `save_onnx`, with its external data file if it has one (renamed after `dst`)."""
    if not external_data_path(src).exists():
        shutil.copyfile(src, dst)
        return
    proto = onnx.load(str(src), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = external_data_path(dst).name
    shutil.copyfile(external_data_path(src), external_data_path(dst))
    write_bytes_atomic(dst, proto.SerializeToString())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write beside, then rename; an OS error (a full disk, `ulimit -f`) names the file and leaves no temp."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from exc


# ops that quantize their input with a scale taken from the whole batch at run time (ONNX Runtime's dynamic forms)
RUN_TIME_QUANTIZERS = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul"})


def all_nodes(graph: onnx.GraphProto):
    """Every node of the graph and of its subgraphs (If / Loop / Scan bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from all_nodes(sub)


def run_time_quantized(graph: onnx.GraphProto) -> bool:
    """Whether the graph computes an activation scale from each batch (dynamic int8): a sample's outputs then
    depend on the batch it runs in."""
    return any(node.op_type in RUN_TIME_QUANTIZERS for node in all_nodes(graph))
