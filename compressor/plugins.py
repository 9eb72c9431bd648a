"""Plugins: stages, loaders and metrics found through Python entry points.

Groups: ``compressor.stages`` (a `Stage` subclass). A plugin that fails to import is reported by name on
stderr and skipped; it never takes down the built-ins.
"""
from __future__ import annotations

import sys
from importlib.metadata import entry_points

STAGE_GROUP = "compressor.stages"
_loaded = False
BROKEN: dict[str, str] = {}


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
                raise TypeError("entry point is not a named Stage subclass")
            STAGES.setdefault(cls.name, cls)
        except Exception as exc:  # a broken plugin must not break the tool
            BROKEN[ep.name] = f"{type(exc).__name__}: {exc}"
            print(f"warning: plugin stage {ep.name!r} ({ep.value}) failed to load: {BROKEN[ep.name]}", file=sys.stderr)
