"""Running a model on data, the same way for every caller: torch modules (eager, `.pt2`, TorchScript) by keyword or
position, and ONNX Runtime sessions."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from compressor.errors import DataError
from compressor.io.data import Dataset
from compressor.runtime.parallel import gather_rows, my_share, unwrapped, world
from compressor.runtime.threads import pinned_threads

EVAL_BATCH = 256


def first_tensor(out: object) -> torch.Tensor:
    """The main output of a forward: the tensor itself, the first of a tuple, or `logits` of a dict/dataclass."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        if "logits" in out:
            return first_tensor(out["logits"])
        return first_tensor(next(iter(out.values())))
    if hasattr(out, "logits"):
        return first_tensor(out.logits)
    if isinstance(out, (tuple, list)) and out:
        return first_tensor(out[0])
    raise DataError(f"the model returned {type(out).__name__}; expected a tensor (or a tuple/dict of tensors)")


def takes_keywords(model: nn.Module, names: list[str]) -> bool:
    """Whether the model expects its inputs by keyword: a `.pt2` program exported with kwargs records them in
    its input spec; an eager forward takes keywords unless its only input is the conventional `x`."""
    model = unwrapped(model)
    if isinstance(model, torch.jit.ScriptModule):
        return False
    spec = getattr(model, "_in_spec", None)
    if isinstance(model, torch.fx.GraphModule) and spec is not None:
        try:
            kwargs_spec = spec.child(1) if hasattr(spec, "child") else spec.children_specs[1]
            return bool(kwargs_spec.context)
        except (AttributeError, IndexError, TypeError):
            return False
    return names != ["x"]


def call_model(model: nn.Module, batch: Dataset, device: torch.device | str = "cpu") -> torch.Tensor:
    """Run the model on one batch, by keyword when it takes its inputs named, else positionally (and the other
    way round if the first refuses the call); its main output (`first_tensor`)."""
    return first_tensor(call_model_raw(model, batch, device))


def call_model_raw(model: nn.Module, batch: Dataset, device: torch.device | str = "cpu") -> object:
    """As `call_model`, but whatever the forward returns (a tensor, tuple, dict...)."""
    inputs = {k: v.to(device) for k, v in batch.inputs.items()}
    calls = [lambda: model(**inputs), lambda: model(*inputs.values())]
    if not takes_keywords(model, list(inputs)):
        calls.reverse()
    try:
        return calls[0]()
    except (TypeError, ValueError) as exc:
        if len(inputs) == 1 and "keyword" not in str(exc) and "argument" not in str(exc):
            raise
        return calls[1]()


def output_tensors(out: object) -> list[torch.Tensor]:
    """Every tensor a forward returned, in the order the ONNX exporter flattens them (pytree leaves)."""
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


@torch.no_grad()
def other_outputs_notes(model: nn.Module, example: Dataset, device: torch.device | str = "cpu") -> list[str]:
    """A report line when the forward returns several tensors (only the main one is judged); else none."""
    out = call_model_raw(model, example, device)
    leaves = output_tensors(out)
    if len(leaves) < 2:
        return []
    main = first_tensor(out)
    which = "`logits`" if isinstance(out, Mapping) and "logits" in out else "the first"
    return [f"the model returns {len(leaves)} output tensors; {which} ({list(main.shape[1:])} per sample) is the one "
            "every metric, stage decision and gate judges: the others are exported and kept, but not verified"]


@torch.no_grad()
def predict(model: nn.Module, data: Dataset, device: torch.device | str = "cpu",
            batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Outputs of the whole dataset (on CPU, float32). Bad input shapes become one-line DataErrors. In a data-parallel
    run each rank computes its share of the rows and every rank gets all of them (runtime/parallel.py)."""
    set_train(model, False)
    if world()[1] > 1:
        return gather_rows(_predict(model, my_share(data), device, batch_size), len(data))
    return _predict(model, data, device, batch_size)


def _predict(model: nn.Module, data: Dataset, device: torch.device | str, batch_size: int) -> torch.Tensor:
    outs = []
    for batch in data.batches(batch_size):
        try:
            outs.append(call_model(model, batch, device).detach().float().cpu())
        except DataError:
            raise
        except Exception as exc:
            shapes = ", ".join(f"{k}{tuple(v.shape)}" for k, v in batch.inputs.items())
            msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise DataError(f"{data.source}: the model cannot run on inputs {shapes}: {msg}") from exc
    return torch.cat(outs)


def onnx_predict(session, data: Dataset, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Outputs of an ONNX Runtime session on the dataset (first graph output)."""
    names = [i.name for i in session.get_inputs()]
    outs = []
    for batch in data.batches(batch_size):
        if set(names) == set(batch.inputs):
            feed = {n: batch.inputs[n].numpy() for n in names}
        else:
            feed = dict(zip(names, (v.numpy() for v in batch.inputs.values())))
        outs.append(torch.from_numpy(np.asarray(session.run(None, feed)[0], dtype=np.float32)))
    return torch.cat(outs)


def set_train(model: nn.Module, mode: bool) -> bool:
    """Switch train/eval; a `.pt2` module refuses, so it stays in eval mode (batch norm frozen). Returns success."""
    try:
        model.train(mode)
        return True
    except NotImplementedError:
        return False


def ort_session(path_or_bytes: Path | bytes, threads: int = 0):
    """An ONNX Runtime CPU session pinned to the run's threads (`threads` 0: the pinned count)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads or pinned_threads()
    opts.inter_op_num_threads = 1
    src = str(path_or_bytes) if isinstance(path_or_bytes, Path) else path_or_bytes
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.max(np.abs(a.numpy() - b.numpy()))) if a.numel() else 0.0
