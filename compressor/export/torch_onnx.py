"""Export the working model to an ONNX graph in memory: reproducible (run-dependent metadata stripped, so the same
seed gives byte-identical files) and with the output every metric judges first.

The default torch exporter (torch.export-based, needs onnxscript) is used; TorchScript modules fall back to the
TorchScript exporter. Batch is dynamic (and the dims a model names in `dynamic_dims`); a model's
`onnx_output_names` name the graph's outputs. Writing the graph is `compressor.io.onnx_files.save_onnx`.
"""
from __future__ import annotations

import io
import re

import onnx
import torch
from torch import nn

from compressor.errors import StageError
from compressor.io.data import Dataset
from compressor.runtime.quiet import quiet_torch
from compressor.runtime.calls import first_tensor, output_tensors, set_train, takes_keywords
from compressor.version import __version__

OPSET = 20


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


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


def _dynamic_shapes(example: Dataset, model: nn.Module) -> dict[str, dict[int, object]]:
    """Batch is dynamic; a model may free more dims (`dynamic_dims`: a text model's sequence length)."""
    dims = getattr(model, "dynamic_dims", None) or {}
    return {name: {d: torch.export.Dim.DYNAMIC for d in dims.get(name, (0,))} for name in example.inputs}


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
        with quiet_torch():
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
                    dyn = _dynamic_shapes(example, model)
                program = torch.onnx.export(model, args, None, kwargs=kwargs, dynamo=True, external_data=False,
                                            dynamic_shapes=dyn, opset_version=OPSET, verbose=False,
                                            optimize=True, output_names=getattr(model, "onnx_output_names", None))
                proto = program.model_proto
                main_output_first(proto, model, args, kwargs)
    except Exception as exc:
        text = ANSI.sub("", str(exc)).strip()  # torch colours its export errors for a terminal
        msg = text.splitlines()[0][:200] if text else type(exc).__name__
        raise StageError(f"ONNX export failed ({type(exc).__name__}: {msg})") from exc
    finally:
        model.to(device)
    return strip_metadata(proto)
