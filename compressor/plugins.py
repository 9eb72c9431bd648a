"""Plugins: stages, model loaders and metrics found through Python entry points.

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
from typing import Any, Callable

STAGE_GROUP = "compressor.stages"
LOADER_GROUP = "compressor.loaders"
METRIC_GROUP = "compressor.metrics"
_loaded = False
BROKEN: dict[str, str] = {}
LOADERS: dict[str, Any] = {}
METRICS: dict[str, Callable] = {}


def _warn(group: str, ep, exc: BaseException) -> None:
    BROKEN[f"{group}:{ep.name}"] = f"{type(exc).__name__}: {exc}"
    print(f"warning: plugin {ep.name!r} ({group} = {ep.value}) failed to load, skipped: "
          f"{type(exc).__name__}: {exc}", file=sys.stderr)


def load_plugins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from compressor.stage import STAGES, Stage

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
