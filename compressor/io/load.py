"""Load a checkpoint into a trainable working model, whatever format it came in.

Accepted: a ``torch.export`` program (``.pt2``); a state_dict (``.pt``/``.pth``/``.safetensors``) with
``--arch package.module:factory`` or ``--arch path/to/file.py:factory``; TorchScript; and a pickled
``nn.Module`` only with ``--trust-pickle`` (unpickling runs code from the file, so it is never done by default).
The format is read from the file's content, not trusted from its extension. A Hugging Face model directory
(config.json and weights, or a sentence-transformers directory) is read by `compressor.io.hf`.
"""
from __future__ import annotations

import hashlib
import inspect
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.errors import ModelLoadError, UsageError
from compressor.io.arch import resolve_arch
from compressor.io.archive import quiet_loaders, zip_names
from compressor.io.hf.files import digest, is_hf_dir, layout, missing_model_message
from compressor.io.hf.load import load_hf_dir
from compressor.io.pt2_check import load_program, load_torchscript
from compressor.registry import loader_for

FORMATS_ACCEPTED = (
    "a torch.export program (.pt2), TorchScript, a state_dict (.pt/.pth/.safetensors) with --arch, "
    "a pickled nn.Module with --trust-pickle, or a Hugging Face model directory"
)
STATE_DICT_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "weights")


@dataclass
class LoadedModel:
    """The working model and what is known about where it came from."""

    module: nn.Module
    format: str  # "pt2" | "state_dict" | "torchscript" | "pickle" | "hf"
    source: str
    sha256: str
    arch: str | None = None
    input_names: list[str] = field(default_factory=list)
    program: torch.export.ExportedProgram | None = None
    hf: Any = None  # a Hugging Face directory's HFModel (io/hf/load.py): task, tokenizer, files to copy

    @property
    def input_dtypes(self) -> dict[str, torch.dtype]:
        """The dtype each input of a `.pt2` program was exported with (data arrays are cast to it: a bool mask
        stays bool, int32 ids become int64); empty when unknown (an eager model takes what the data holds)."""
        if self.program is None:
            return {}
        vals = {n.name: n.meta.get("val") for n in self.program.graph.nodes if n.op == "placeholder"}
        specs = [s for s in self.program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
        dtypes = {s.arg.name: getattr(vals.get(s.arg.name), "dtype", None) for s in specs}
        return {k: v for k, v in dtypes.items() if isinstance(v, torch.dtype)}

    @property
    def data_encoder(self) -> Any:
        """The model's tokenizer or image-processor side for raw text or image folders (a Hugging Face directory's);
        None for other formats."""
        return None if self.hf is None else self.hf.encoder

    @property
    def exported(self) -> bool:
        """True for a module rebuilt from a torch.export program: `.train()` is unsupported, BN stays frozen."""
        return self.format == "pt2"


def retie_shared(module: nn.Module) -> nn.Module:
    """Make tied weights one Parameter again. `ExportedProgram.module()` gives each name of a tied weight (e.g.
    `lm_head.weight` and `encoder.embed.weight`) its own Parameter over the same storage; stages must see one
    weight (pruned once, its mask on the one storage, stored once with an alias), so names whose tensors share
    storage, shape and strides are pointed at the first one's Parameter."""
    first: dict[tuple, nn.Parameter] = {}
    for name, param in list(module.named_parameters(remove_duplicate=False)):
        key = (param.data_ptr(), tuple(param.shape), param.stride(), param.dtype)
        if key not in first:
            first[key] = param
            continue
        if first[key] is not param:
            owner, _, attr = name.rpartition(".")
            setattr(module.get_submodule(owner) if owner else module, attr, first[key])
    return module


def source_sha256(path: Path) -> str:
    """A model file's sha256, or for a Hugging Face directory one over the files that define its model."""
    if is_hf_dir(path):
        return digest(layout(path, trust_pickle=True))
    if path.is_dir():
        raise ModelLoadError(f"model path is not a file: {path} (a Hugging Face model directory has a config.json)")
    return file_sha256(path)


def source_bytes(path: Path) -> int:
    """The bytes of a model file, or of a Hugging Face directory's weight files."""
    if is_hf_dir(path):
        return sum(p.stat().st_size for p in layout(path, trust_pickle=True).weights)
    return path.stat().st_size


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def detect_format(path: Path) -> str:
    """Name the checkpoint format from the file's content."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if len(head) >= 8 and path.suffix.lower() == ".safetensors":
        return "safetensors"
    names = zip_names(path)
    if names:
        if any(n.endswith("archive_format") for n in names) or any("serialized_exported_program" in n for n in names):
            return "pt2"
        if any(n.endswith("constants.pkl") for n in names) and any("/code/" in n for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "torch_pickle"
        raise ModelLoadError(f"{path}: a zip archive that is not a PyTorch checkpoint; accepted: {FORMATS_ACCEPTED}")
    if head[:1] == b"\x80":  # legacy (non-zip) torch.save
        return "torch_pickle"
    if len(head) >= 8 and int.from_bytes(head[:8], "little") < (1 << 27) and head[8:9] == b"{":
        return "safetensors"
    raise ModelLoadError(f"{path}: unknown model format; accepted: {FORMATS_ACCEPTED}")


def _unwrap_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in STATE_DICT_WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                return _unwrap_state_dict(obj[key], path)
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {str(k): v for k, v in obj.items()}
    raise ModelLoadError(f"{path}: holds {type(obj).__name__}, not a state_dict of tensors; accepted: {FORMATS_ACCEPTED}")


def load_state_dict_into(model: nn.Module, state: Mapping[str, torch.Tensor], what: str,
                         one_at_a_time: bool = False) -> None:
    """Load `state` into the model, every name and shape checked first (one line naming the first misfit).
    `one_at_a_time`: read each tensor of `state` (a `safetensors_io.DecodedWeights`, which decodes it then) and copy
    it into the model's own, so the model and every decoded weight are never held at once; the model's own load
    hooks are not run (a state written from this model's own `state_dict` needs none)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"missing {len(missing)} (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"unexpected {len(unexpected)} (e.g. {unexpected[0]})")
        raise ModelLoadError(f"{what}: weights do not fit the architecture: {', '.join(detail)}")
    if not one_at_a_time:
        _check_shapes(own, state, what)
        model.load_state_dict(state, strict=True)
        return
    with torch.no_grad():
        for k, target in own.items():
            tensor = state[k]
            _check_shapes({k: target}, {k: tensor}, what)
            target.copy_(tensor)


def _check_shapes(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], what: str) -> None:
    for k in (k for k in own if tuple(own[k].shape) != tuple(state[k].shape)):
        raise ModelLoadError(f"{what}: weight {k} has shape {tuple(state[k].shape)}, the architecture expects "
                             f"{tuple(own[k].shape)}")


def forward_input_names(model: nn.Module, program: torch.export.ExportedProgram | None = None) -> list[str]:
    """The names of the model's forward arguments, in order (the data files may name arrays after them)."""
    if program is not None:
        return [spec.arg.name for spec in program.graph_signature.input_specs if spec.kind.name == "USER_INPUT"]
    if isinstance(model, torch.jit.ScriptModule):
        return [a.name for a in model.forward.schema.arguments[1:]]
    params = inspect.signature(model.forward).parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def load_model(path: str | Path, arch: str | None = None, trust_pickle: bool = False, task: str | None = None,
               trust_remote_code: bool = False) -> LoadedModel:
    """Read a checkpoint (never modifying it) and return the working model in eval mode; weights must be finite
    (a corrupted archive can decode to NaN without any error from torch). Zip archives are CRC-checked first and
    torch's logging is kept off stderr (`compressor.io.archive`). `task` and `trust_remote_code` are for a Hugging
    Face model directory (io/hf/)."""
    path = Path(path)
    with quiet_loaders():
        if is_hf_dir(path):
            hf = load_hf_dir(path, task, trust_pickle, trust_remote_code)
            loaded = LoadedModel(hf.module, "hf", str(path), hf.sha256, None, hf.input_names, hf=hf)
        elif task is not None and path.exists():
            raise UsageError(f"--task {task}: only for a Hugging Face model directory; {path} is not one")
        else:
            loaded = _load_model(path, arch, trust_pickle)
    for name, t in list(loaded.module.named_parameters()) + list(loaded.module.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ModelLoadError(f"{path}: weight {name} contains NaN or infinite values; the file is corrupt")
    return loaded


def _load_model(path: str | Path, arch: str | None = None, trust_pickle: bool = False) -> LoadedModel:
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(missing_model_message(path))
    if not path.is_file():
        raise ModelLoadError(f"model path is not a file: {path} (a Hugging Face model directory has a config.json)")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: the file is empty; accepted: {FORMATS_ACCEPTED}")
    plugin = loader_for(path)
    digest = file_sha256(path)
    if plugin is not None:
        return _from_plugin(plugin, path, digest, arch)
    fmt = "checkpoint"
    try:
        fmt = detect_format(path)
        if fmt == "pt2":
            program = load_program(path, trust_pickle, checked=True)
            module = retie_shared(program.module())
            return LoadedModel(module, "pt2", str(path), digest, None, forward_input_names(module, program), program)
        if fmt == "torchscript":
            module = load_torchscript(path, checked=True)
            module.eval()
            return LoadedModel(module, "torchscript", str(path), digest, None, forward_input_names(module))
        if fmt == "safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
            return _from_state_dict(state, path, digest, arch)
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if not trust_pickle:
                raise ModelLoadError(
                    f"{path}: holds pickled Python objects (likely a whole nn.Module); unpickling runs code from the "
                    "file, so it is refused by default: pass --trust-pickle if you trust its source, or save a "
                    "state_dict and pass --arch"
                ) from exc
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
            if not isinstance(obj, nn.Module):
                raise ModelLoadError(f"{path}: the pickle holds {type(obj).__name__}, not an nn.Module")
            obj.eval()
            return LoadedModel(obj, "pickle", str(path), digest, None, forward_input_names(obj))
        if isinstance(obj, nn.Module):
            obj.eval()
            return LoadedModel(obj, "pickle", str(path), digest, None, forward_input_names(obj))
        return _from_state_dict(_unwrap_state_dict(obj, path), path, digest, arch)
    except (ModelLoadError, UsageError):
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{path}: cannot load as {fmt} ({type(exc).__name__}: {first[:200]})") from exc


def _from_plugin(plugin, path: Path, digest: str, arch: str | None) -> LoadedModel:
    name, loader = plugin
    try:
        obj = loader.load(path)
    except Exception as exc:
        raise ModelLoadError(f"{path}: loader plugin {name!r} failed ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, nn.Module):
        obj.eval()
        return LoadedModel(obj, "pickle", str(path), digest, None, forward_input_names(obj))
    return _from_state_dict(_unwrap_state_dict(obj, path), path, digest, arch)


def _from_state_dict(state: dict[str, torch.Tensor], path: Path, digest: str, arch: str | None) -> LoadedModel:
    if arch is None:
        raise UsageError(
            f"{path} is a state_dict (weights without code): pass --arch package.module:factory "
            "or --arch path/to/file.py:factory"
        )
    model = resolve_arch(arch)
    load_state_dict_into(model, state, str(path))
    model.eval()
    return LoadedModel(model, "state_dict", str(path), digest, arch, forward_input_names(model))


def model_bytes_of(module: nn.Module) -> int:
    """fp32-equivalent bytes of parameters and buffers as stored (each tensor counted once)."""
    seen: set[int] = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


