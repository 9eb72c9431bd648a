"""Export the working model to one self-contained, reproducible ONNX file, checked and parity-tested.

The default torch exporter (torch.export-based, needs onnxscript) is used; TorchScript modules fall back to the
TorchScript exporter. Batch is dynamic. Metadata that varies between runs (stack traces, source paths, exporter
rule names) is stripped so the same seed gives byte-identical files.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from compressor.errors import OutputError, StageError
from compressor.io.calls import first_tensor, output_tensors, set_train, takes_keywords
from compressor.io.data import Dataset
from compressor.io.threads import pinned_threads
from compressor.version import __version__

OPSET = 20


@contextlib.contextmanager
def quiet_exporter():
    """Silence the exporter's warnings, log lines and progress prints."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript",
                                                "torch._dynamo", "torch.fx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def strip_metadata(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove run-dependent metadata: node/graph/model doc strings and metadata_props."""
    def clean_graph(graph: onnx.GraphProto) -> None:
        graph.doc_string = ""
        for coll in (graph.input, graph.output, graph.value_info, graph.initializer):
            for item in coll:
                if hasattr(item, "doc_string"):
                    item.doc_string = ""
                if hasattr(item, "metadata_props"):
                    del item.metadata_props[:]
        for node in graph.node:
            node.doc_string = ""
            del node.metadata_props[:]
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    clean_graph(attr.g)
                for g in attr.graphs:
                    clean_graph(g)
        if hasattr(graph, "metadata_props"):
            del graph.metadata_props[:]

    clean_graph(model.graph)
    for fn in model.functions:
        fn.doc_string = ""
        for node in fn.node:
            node.doc_string = ""
            del node.metadata_props[:]
    model.doc_string = ""
    del model.metadata_props[:]
    model.producer_name = "compressor"
    model.producer_version = __version__
    return model


def _dynamic_shapes(example: Dataset) -> dict[str, dict[int, object]]:
    return {name: {0: torch.export.Dim.DYNAMIC} for name in example.inputs}


def main_output_first(proto: onnx.ModelProto, model: nn.Module, args: tuple, kwargs: dict | None) -> None:
    """Put the output every metric judges (`first_tensor`: a dict's `logits`, a tuple's first) first among the
    graph's outputs, in place. The exporter flattens a dict in its key order, so `{"emb": ..., "logits": ...}` would
    otherwise have ONNX Runtime's first output (what `onnx_predict` and most users read) be the embedding while
    torch's side of every comparison is the logits. The other outputs stay, in their order."""
    with torch.no_grad():
        out = model(*args, **(kwargs or {}))
    leaves = output_tensors(out)
    if len(leaves) < 2 or len(leaves) != len(proto.graph.output):
        return
    main = first_tensor(out)
    index = next((i for i, t in enumerate(leaves) if t is main), 0)
    if index:
        outputs = list(proto.graph.output)
        order = [outputs[index]] + outputs[:index] + outputs[index + 1:]
        del proto.graph.output[:]
        proto.graph.output.extend(order)


def export_onnx_proto(model: nn.Module, example: Dataset, device: str = "cpu") -> onnx.ModelProto:
    """Trace the model into an ONNX ModelProto (not yet written)."""
    set_train(model, False)
    model = model.to("cpu")
    inputs = {k: v.cpu() for k, v in example.inputs.items()}
    try:
        with quiet_exporter():
            if isinstance(model, torch.jit.ScriptModule):
                buf = io.BytesIO()
                torch.onnx.export(model, tuple(inputs.values()), buf, dynamo=False, opset_version=17,
                                  input_names=list(inputs), output_names=["output"],
                                  dynamic_axes={**{n: {0: "batch"} for n in inputs}, "output": {0: "batch"}})
                proto = onnx.load_from_string(buf.getvalue())
            else:
                if not takes_keywords(model, list(inputs)):
                    args, kwargs = tuple(inputs.values()), None
                    dyn = tuple({0: torch.export.Dim.DYNAMIC} for _ in inputs)
                else:
                    args, kwargs = (), dict(inputs)
                    dyn = _dynamic_shapes(example)
                program = torch.onnx.export(model, args, None, kwargs=kwargs, dynamo=True, external_data=False,
                                            dynamic_shapes=dyn, opset_version=OPSET, verbose=False,
                                            optimize=True)
                proto = program.model_proto
                main_output_first(proto, model, args, kwargs)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise StageError(f"ONNX export failed ({type(exc).__name__}: {msg})") from exc
    finally:
        model.to(device)
    return strip_metadata(proto)


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


def ort_session(path_or_bytes: Path | bytes, threads: int = 0):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads or pinned_threads()
    opts.inter_op_num_threads = 1
    src = str(path_or_bytes) if isinstance(path_or_bytes, Path) else path_or_bytes
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.max(np.abs(a.numpy() - b.numpy()))) if a.numel() else 0.0


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
