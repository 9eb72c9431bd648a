"""Running a model on data, the same way for every caller: torch modules (eager, `.pt2`, TorchScript) by keyword or
position, and ONNX Runtime sessions."""
from __future__ import annotations

import functools
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


def named_outputs(out: object) -> list[tuple[str, torch.Tensor]]:
    """Every tensor a forward returned, named by its place (`boxes`, `extra.0`, `1`), the main one (`first_tensor`)
    first and the others in the order the ONNX exporter flattens them: the order of model.onnx's outputs."""
    leaves = [(".".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path) or "output", t)
              for path, t in torch.utils._pytree.tree_flatten_with_path(out)[0] if isinstance(t, torch.Tensor)]
    main = first_tensor(out)
    index = next((i for i, (_, t) in enumerate(leaves) if t is main), 0)
    return [leaves[index]] + leaves[:index] + leaves[index + 1:]


@torch.no_grad()
def output_names(model: nn.Module, example: Dataset, device: torch.device | str = "cpu") -> list[str]:
    """The names of the model's outputs (`named_outputs` order: the main one first)."""
    return [n for n, _ in named_outputs(call_model_raw(model, example, device))]


def other_outputs_notes(names: list[str]) -> list[str]:
    """A report line when the forward returns several tensors (the main one drives every decision; each other one
    is verified on held-out and gated, verify/outputs.py); else none."""
    if len(names) < 2:
        return []
    return [f"the model returns {len(names)} output tensors, named {', '.join(names)}: {names[0]} drives the metric "
            "and every stage decision (the others are not optimised for); each other one is verified on held-out too "
            "(model.onnx against the original, its own metric, the --max-drop gate; --output-metric NAME=KIND)"]


@torch.no_grad()
def predict_outputs(model: nn.Module, data: Dataset, device: torch.device | str = "cpu",
                    batch_size: int = EVAL_BATCH) -> list[tuple[str, torch.Tensor]]:
    """Every named output (`named_outputs` order) of the whole dataset, on CPU, float32 (one process)."""
    set_train(model, False)
    parts: list[list[torch.Tensor]] = []
    names: list[str] = []
    for batch in data.batches(batch_size):
        named = named_outputs(call_model_raw(model, batch, device))
        names = [n for n, _ in named]
        parts.append([t.detach().float().cpu() for _, t in named])
    return [(name, torch.cat([p[i] for p in parts]) if all(p[i].ndim for p in parts) else parts[0][i])
            for i, name in enumerate(names)]  # a 0-d output (a scalar per call, not per sample) as the first call's


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
            shapes = ", ".join(f"{k}{tuple(v.shape)} {str(v.dtype).removeprefix('torch.')}"
                               for k, v in batch.inputs.items())
            msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise DataError(f"{data.source}: the model cannot run on inputs {shapes}: {msg}") from exc
    return torch.cat(outs)


def onnx_predict(session, data: Dataset, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Outputs of an ONNX Runtime session on the dataset (first graph output)."""
    return onnx_predict_outputs(session, data, batch_size, first_only=True)[0]


def onnx_predict_outputs(session, data: Dataset, batch_size: int = EVAL_BATCH,
                         first_only: bool = False) -> list[torch.Tensor]:
    """Every graph output of an ONNX Runtime session on the dataset, in the graph's order (`first_only`: the
    first)."""
    names = [i.name for i in session.get_inputs()]
    wanted = [session.get_outputs()[0].name] if first_only else None
    parts = []
    for batch in data.batches(batch_size):
        if set(names) == set(batch.inputs):
            feed = {n: batch.inputs[n].numpy() for n in names}
        else:
            feed = dict(zip(names, (v.numpy() for v in batch.inputs.values())))
        parts.append([torch.from_numpy(np.asarray(o, dtype=np.float32)) for o in session.run(wanted, feed)])
    return [torch.cat([p[i] for p in parts]) if all(p[i].ndim for p in parts) else parts[0][i]
            for i in range(len(parts[0]))]  # a 0-d output (a scalar per call) as the first call's


def set_train(model: nn.Module, mode: bool) -> bool:
    """Switch train/eval; a `.pt2` module refuses, so it stays in eval mode (batch norm frozen). Returns success."""
    try:
        model.train(mode)
        return True
    except NotImplementedError:
        return False


def set_train_for_distillation(model: nn.Module) -> bool:
    """Training mode for a fine-tune towards the original's own outputs: the model's own training mode for its
    normalization layers with running statistics (batch norm adapts to the changed weights as in training, unless the
    model's `train()` keeps it frozen), every other module in eval mode. Why: the target is the original's
    deterministic function; dropout, attention dropout (read from a parent's `training` flag), stochastic depth and
    layer drop only add noise to a student that starts next to it, and a pretrained transformer's fine-tune then moves
    away from its teacher. Eval mode also keeps train-only output structures (auxiliary heads, loss dictionaries) out
    of the fine-tune. Returns `set_train`'s success."""
    if not set_train(model, True):
        return False
    norms = [m for m in model.modules() if m.training and has_running_stats(m)]
    set_train(model, False)
    for m in norms:
        m.training = True  # this layer only: its children, if any, stay as they are
    return True


def has_running_stats(module: nn.Module) -> bool:
    """A normalization layer that keeps running statistics (batch norm, instance norm with tracking), eager or
    TorchScript (whose modules are not instances of the eager classes)."""
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return module.track_running_stats
    return isinstance(module, torch.jit.ScriptModule) and hasattr(module, "running_mean")


@functools.cache
def _shared_cpu_arena() -> bool:
    """Register one CPU arena with ONNX Runtime's environment, once per process (ORT's "share allocators between
    sessions"), for the sessions made with `shared_arena`; False when ORT refuses (e.g. the host process registered
    one of its own): those sessions then keep arenas of their own."""
    import onnxruntime as ort

    memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    try:
        ort.create_and_register_allocator(memory, ort.OrtArenaCfg(0, -1, -1, -1))  # ORT's default arena settings
    except Exception:  # noqa: BLE001 - ORT's own error types
        return False
    return True


def ort_session(path_or_bytes: Path | bytes, threads: int = 0, shared_arena: bool = False):
    """An ONNX Runtime CPU session pinned to the run's threads (`threads` 0: the pinned count). `shared_arena`: its
    activations go to the process's one shared arena instead of an arena of its own. Why: sessions run in turns
    (graphs timed against each other) otherwise each hold an arena grown to their own need, and together the sum of
    them; a shared one holds the largest (a BERT-base-sized encoder's float and int8 graphs at batch 64: 0.36 GB
    less, at the same speed). The shared arena outlives its sessions: their last run shrinks it
    (runtime/timing.py)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # fatal only: an error raises, and the caller says it in one line
    opts.intra_op_num_threads = threads or pinned_threads()
    opts.inter_op_num_threads = 1
    if shared_arena and _shared_cpu_arena():
        opts.add_session_config_entry("session.use_env_allocators", "1")
    src = str(path_or_bytes) if isinstance(path_or_bytes, Path) else path_or_bytes
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.max(np.abs(a.numpy() - b.numpy()))) if a.numel() else 0.0
