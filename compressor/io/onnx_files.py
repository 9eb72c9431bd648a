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
# a graph that is only worked on (quantized, timed, compared) keeps weights above this beside it: ONNX Runtime then
# maps them from the file instead of copying them out of a parsed protobuf (a session of a 0.44 GB graph: 0.34 GB
# over its start instead of 0.64 GB), and writing it makes no serialized copy
WORKING_EXTERNAL_DATA_BYTES = 64 * 2**20


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


def save_onnx(proto: onnx.ModelProto, path: Path, working: bool = False) -> None:
    """Write the graph atomically, then run the full `onnx.checker` on the written file (so no second serialized
    copy is made in memory). One self-contained file; a graph whose weights pass EXTERNAL_DATA_BYTES (`working`, a
    graph only worked on: WORKING_EXTERNAL_DATA_BYTES) keeps them in `external_data_path(path)` (ONNX external
    data, read by ONNX Runtime and `onnx.load` from the same folder); then `proto` no longer holds them (a large
    graph is not kept twice)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    beside = min(EXTERNAL_DATA_BYTES, WORKING_EXTERNAL_DATA_BYTES) if working else EXTERNAL_DATA_BYTES
    try:
        if initializer_bytes(proto) > beside:
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
    """Copy a graph written by `save_onnx`, with its external data file if it has one (renamed after `dst`). Weights
    kept beside a working graph that fit in one protobuf (under EXTERNAL_DATA_BYTES) are copied into one file."""
    data = external_data_path(src)
    if not data.exists():
        shutil.copyfile(src, dst)
        return
    if data.stat().st_size <= EXTERNAL_DATA_BYTES:
        write_bytes_atomic(dst, inlined(onnx.load(str(src))).SerializeToString())
        return
    proto = onnx.load(str(src), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = external_data_path(dst).name
    shutil.copyfile(external_data_path(src), external_data_path(dst))
    write_bytes_atomic(dst, proto.SerializeToString())


def inlined(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A graph loaded with its external data, as `save_onnx` writes it in one file: `onnx.load` marks each weight
    it read back `data_location: DEFAULT`, a field the one-file graph leaves unset (same values, other bytes)."""
    for tensor in proto.graph.initializer:
        if tensor.HasField("data_location") and tensor.data_location == onnx.TensorProto.DEFAULT:
            tensor.ClearField("data_location")
    return proto


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
