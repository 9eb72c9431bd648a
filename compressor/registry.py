"""The registry: stages, structure handlers, model loaders and metrics, and the entry points that fill it.

Plugins and the built-in algorithms import this module; it imports none of them (only `compressor.stage` and
`compressor.errors`), so registration goes one way.

Groups (the built-in stages register through the first one too, see pyproject.toml):
- ``compressor.stages``: a `compressor.stage.Stage` subclass with a name, a Config dataclass and `apply`;
- ``compressor.loaders``: an object with ``suffixes`` (e.g. ``(".npz",)``) and ``load(path) -> state_dict or
  nn.Module``; a state_dict is then built into ``--arch`` like any other;
- ``compressor.metrics``: a function ``(outputs, labels | None, reference | None) -> float | None``, reported
  beside the built-in metrics and usable in ``--floor name=value``.
A plugin that fails to load is reported by name on stderr and skipped: it never takes down the built-ins.
"""
from __future__ import annotations

import sys
from importlib.metadata import entry_points
from dataclasses import dataclass
from typing import Any, Callable

from compressor.errors import UsageError
from compressor.stage import Stage

STAGE_GROUP = "compressor.stages"
LOADER_GROUP = "compressor.loaders"
METRIC_GROUP = "compressor.metrics"
_loaded = False
BROKEN: dict[str, str] = {}
LOADERS: dict[str, Any] = {}
METRICS: dict[str, Callable] = {}
STAGES: dict[str, type[Stage]] = {}


@dataclass(frozen=True)
class StructureHandler:
    """What the export layer does with a structure record of one kind (the record a structural stage returns).

    - ``rebuild(model, entry, state) -> model``: restore the compressed form on a fresh source model
      (`compressor.load`, and `--resume` from a checkpoint);
    - ``onnx_rewrite(proto, entry, model) -> proto``: rewrite the exported graph (e.g. keep only the ring);
    - ``int8_rewrite(proto, entry, model) -> proto``: make the structure's own compact tensors int8 before
      ONNX Runtime's quantizer handles the ordinary layers;
    - ``describe_check(check, metrics) -> note``: word the result of `StageResult.verify_onnx` (may add metrics).
    """

    kind: str
    rebuild: Callable[[Any, dict, dict], Any]
    onnx_rewrite: Callable[[Any, dict, Any], Any] | None = None
    int8_rewrite: Callable[[Any, dict, Any], Any] | None = None
    describe_check: Callable[[dict, dict], str] | None = None


STRUCTURES: dict[str, StructureHandler] = {}


def register_stage(cls: type[Stage]) -> type[Stage]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    STAGES[cls.name] = cls
    return cls


def register_structure(handler: StructureHandler) -> StructureHandler:
    STRUCTURES[handler.kind] = handler
    return handler


def _warn(group: str, ep, exc: BaseException) -> None:
    BROKEN[f"{group}:{ep.name}"] = f"{type(exc).__name__}: {exc}"
    print(f"warning: plugin {ep.name!r} ({group} = {ep.value}) failed to load, skipped: "
          f"{type(exc).__name__}: {exc}", file=sys.stderr)


def load_plugins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for ep in entry_points(group=STAGE_GROUP):
        try:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Stage) and cls.name):
                raise TypeError("not a named Stage subclass")
            STAGES.setdefault(cls.name, cls)
        except Exception as exc:  # a broken plugin must not break the tool
            _warn(STAGE_GROUP, ep, exc)
    for ep in entry_points(group=LOADER_GROUP):
        try:
            obj = ep.load()
            if not (hasattr(obj, "suffixes") and callable(getattr(obj, "load", None))):
                raise TypeError("a loader needs `suffixes` and `load(path)`")
            LOADERS[ep.name] = obj
        except Exception as exc:
            _warn(LOADER_GROUP, ep, exc)
    for ep in entry_points(group=METRIC_GROUP):
        try:
            fn = ep.load()
            if not callable(fn):
                raise TypeError("a metric must be callable")
            METRICS[ep.name] = fn
        except Exception as exc:
            _warn(METRIC_GROUP, ep, exc)


def loader_for(path) -> tuple[str, Any] | None:
    load_plugins()
    suffix = str(path).lower()
    for name, loader in LOADERS.items():
        if any(suffix.endswith(s.lower()) for s in loader.suffixes):
            return name, loader
    return None


def plugin_metrics() -> dict[str, Callable]:
    load_plugins()
    return dict(METRICS)


def available_stages() -> dict[str, type[Stage]]:
    """Every registered stage: the built-ins and plugins (both through entry points) and any registered in code."""
    load_plugins()
    return dict(STAGES)


def get_stage(name: str) -> type[Stage]:
    stages = available_stages()
    if name not in stages:
        raise UsageError(f"unknown stage {name!r}; valid stages: {', '.join(sorted(stages))}")
    return stages[name]


def structure_handler(kind: str) -> StructureHandler | None:
    """The handler of a structure kind (loading the plugins first, since structural stages register it)."""
    if kind not in STRUCTURES:
        load_plugins()
    return STRUCTURES.get(kind)


def validate_order(names: list[str]) -> None:
    """Refuse an unsupported stage order before anything runs, naming the offending pair."""
    if not names:
        raise UsageError("--pipeline is empty; name at least one stage (see `compress stages`)")
    for i, name in enumerate(names):
        get_stage(name)
        if name in names[:i]:
            raise UsageError(f"--pipeline: stage {name!r} appears twice")
    seen: list[str] = []
    for i, name in enumerate(names):
        cls = get_stage(name)
        for prev in seen:
            if prev not in cls.follows:
                raise UsageError(
                    f"--pipeline: {name!r} cannot run after {prev!r}; {name!r} may follow: "
                    f"{', '.join(sorted(cls.follows)) or 'nothing'}"
                )
        seen.append(name)
    for i, name in enumerate(names):
        if get_stage(name).export_time and i != len(names) - 1:
            raise UsageError(f"--pipeline: {name!r} works on the exported graph and must be the last stage")
