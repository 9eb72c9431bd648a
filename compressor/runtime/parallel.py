"""Data-parallel runs under `torchrun`: the process group, the rows of a batch this process takes, DDP around a model
being fine-tuned, and predictions gathered so every process judges the same numbers.

Why this shape: every process loads the same model and data and draws the same seeded batches; each takes an
interleaved share of every batch's rows, and DistributedDataParallel averages the gradients (gloo on CPU, nccl on
CUDA), so all processes hold the same weights after every step. Evaluation is split the same way and the outputs
are gathered back in sample order before any metric is computed, so every decision (keep, restore, stop) is made
from identical numbers on every rank and the masks stay identical without being sent. Only rank 0 writes files.
Outside a process group (a plain `compress` run) every function here is the single-process identity.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any

import torch
from torch import nn

from compressor.errors import UsageError
from compressor.io.data import Dataset


def world() -> tuple[int, int]:
    """(rank, world size) of the running process group; (0, 1) without one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(device: str) -> str:
    """Join the launcher's process group (gloo for CPU, nccl for CUDA); returns the device this rank uses (a CUDA
    run gets the GPU of its local rank)."""
    dist = torch.distributed
    if not dist.is_available():
        raise UsageError("this torch build has no torch.distributed: run without torchrun")
    cuda = torch.device(device).type == "cuda"
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return device


def stop() -> None:
    """Leave the process group (every rank, after the last collective step)."""
    if world()[1] > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def backend() -> str | None:
    return torch.distributed.get_backend() if world()[1] > 1 else None


def my_rows(n: int) -> torch.Tensor:
    """This rank's rows of n: rank, rank + size, ... (all of them when there are fewer than two rows a rank, so every
    rank takes part in the step with at least two rows: batch norm in training refuses one)."""
    rank, size = world()
    return torch.arange(rank, n, size) if n >= 2 * size else torch.arange(n)


def share_weight(n: int) -> float:
    """The factor on this rank's mean loss over its rows of a batch of n that makes DDP's average of the ranks'
    gradients the gradient of the whole batch's mean loss when the shares differ in size (1 when they do not)."""
    rank, size = world()
    return len(my_rows(n)) * size / n if n >= 2 * size else 1.0


def my_share(data: Dataset) -> Dataset:
    """This rank's rows of `data` (`my_rows`); `data` itself in a single-process run."""
    return data if world()[1] == 1 else data.subset(my_rows(len(data)))


def gather_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    """The [n, ...] tensor whose interleaved shares (`my_rows`) the ranks computed, on every rank, in sample order."""
    rank, size = world()
    if size == 1 or n < 2 * size:
        return local
    width = -(-n // size)
    device = torch.device("cuda", torch.cuda.current_device()) if backend() == "nccl" else torch.device("cpu")
    padded = local.new_zeros((width, *local.shape[1:])).to(device)
    padded[:len(local)] = local.to(device)
    parts = [torch.empty_like(padded) for _ in range(size)]
    torch.distributed.all_gather(parts, padded)
    out = local.new_empty((n, *local.shape[1:]))
    for r, part in enumerate(parts):
        rows = torch.arange(r, n, size)
        out[rows] = part[:len(rows)].to(out.device)
    return out


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` wrapped in DistributedDataParallel inside a process group (its gradients averaged over the ranks in
    backward); the model itself otherwise. `static_graph`: the parameters a forward uses are the same at every step,
    and some may go unused (a stage may train only part of a model). Buffers are not sent at every step (rpg's
    index maps are large and constant); `sync_buffers` gives every rank rank 0's before each validation."""
    if world()[1] == 1 or not any(p.requires_grad for p in model.parameters()):
        return model
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, static_graph=True, broadcast_buffers=False)


def sync_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (batch-norm running statistics, which each rank updates from its own rows) on every rank,
    so the model every rank evaluates is the same."""
    if world()[1] == 1:
        return
    for buf in unwrapped(model).buffers():
        torch.distributed.broadcast(buf.data, src=0)


def unwrapped(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def from_rank0(value: Any) -> Any:
    """Rank 0's `value` on every rank (a picklable object): a choice that must not differ between ranks."""
    if world()[1] == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def state_digest(model: nn.Module, masks: dict[str, torch.Tensor]) -> str:
    """sha256 of the model's state and the masks: equal on every rank when the ranks hold the same result."""
    h = hashlib.sha256()
    for name, t in sorted({**model.state_dict(), **{f"mask:{k}": v for k, v in masks.items()}}.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def all_digests(digest: str) -> list[str]:
    """Every rank's digest, in rank order."""
    if world()[1] == 1:
        return [digest]
    out: list[Any] = [None] * world()[1]
    torch.distributed.all_gather_object(out, digest)
    return out
