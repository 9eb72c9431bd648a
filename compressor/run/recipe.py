"""Recipes: a YAML (or TOML) file naming the stages in order with their options, plus run-level settings.

    seed: 0
    device: cpu
    data: {heldout: heldout.npz, train: train.npz, val: val.npz, calib: calib.npz}
    gates: {max_drop: 1.0, min_recovery: 0.99, max_bytes: 2000000, floors: {accuracy: 95}}
    output_metrics: {boxes: mse}
    stages:
      - shrink: {epochs: 10}
      - prune: {target: 0.9}
      - quantize

Everything is validated before anything runs: an unknown stage, an unknown or mistyped option, or a bad value is
a usage error naming the file, the line (YAML), the key and the valid choices. YAML is read by the safe rules
(a `!!python/...` tag is a usage error with its line), a recipe is at most 1 MiB, and at most 10,000 values are
built from it, aliases followed: an alias bomb fails at once. `--set stage.key=value` overrides
recipe values; command-line options override run-level settings. The resolved recipe (every default filled in)
is written next to the artifacts as `recipe.yaml`; running it again reproduces the run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from compressor.errors import UsageError
from compressor.registry import get_stage
from compressor.run.settings import SETTINGS, device_problem, parse_setting, recipe_value
from compressor.schema import config_as_dict
from compressor.stage import build_config
from compressor.verify.outputs import OUTPUT_KINDS, parse_output_metrics

RECIPE_SUFFIXES = (".yaml", ".yml", ".toml")
# where a recipe holds each run setting is declared with the setting (run/settings.py)
RUN_KEYS = tuple(f.metadata["recipe"] for f in SETTINGS.values() if "." not in f.metadata["recipe"])
TOP_KEYS = (*RUN_KEYS, "data", "gates", "output_metrics", "stages")
DATA_KEYS = ("heldout", "train", "val", "calib")
GATE_KEYS = (*(f.metadata["recipe"].split(".")[1] for f in SETTINGS.values() if f.metadata["recipe"].startswith(
    "gates.")), "floors")
MAX_RECIPE_BYTES = 1 << 20
MAX_VALUES = 10_000  # values built from the YAML, aliases followed
PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


@dataclass
class Recipe:
    path: Path
    stages: list[tuple[str, dict[str, Any], int | None]]  # (stage, raw options, line)
    settings: dict[str, Any] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)

    def where(self, key: str) -> str:
        line = self.lines.get(key)
        return f"{self.path}" + (f" line {line}" if line else "")


def is_recipe(pipeline: str) -> bool:
    return pipeline.strip().lower().endswith(RECIPE_SUFFIXES)


def _yaml_error(path: Path, exc: Exception, mark=None, key: str = "") -> UsageError:
    """A YAML problem as a usage error naming the file, the line and (when known) the key."""
    mark = mark or getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{path}" + (f" line {mark.line + 1}" if mark is not None else "") + (f" ({key})" if key else "")
    why = getattr(exc, "problem", None) or str(exc) or type(exc).__name__
    return UsageError(f"{where}: not a valid recipe ({' '.join(str(why).split())[:200]})")


def _to_python(node: yaml.Node, path: str, lines: dict[str, int], file: Path, budget: list[int]) -> Any:
    """Plain values from the composed YAML, each key's line noted. Aliases are followed, but no more than
    MAX_VALUES values are built in all (an alias bomb fails at once instead of expanding)."""
    budget[0] -= 1
    if budget[0] < 0:
        raise UsageError(f"{file} line {node.start_mark.line + 1}: the recipe expands to more than {MAX_VALUES:,} "
                         "values (nested YAML aliases?); write it out plainly")
    lines[path] = node.start_mark.line + 1
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in PLAIN_TAGS:
        raise UsageError(f"{file} line {node.start_mark.line + 1} ({path}): not a valid recipe (tag {node.tag!r}: "
                         "a recipe holds plain mappings, lists and values)")
    if isinstance(node, yaml.MappingNode):
        out = {}
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                raise UsageError(f"{file} line {k.start_mark.line + 1}: a recipe key must be a plain name")
            key = str(_scalar(k, file, path))
            out[key] = _to_python(v, f"{path}.{key}" if path else key, lines, file, budget)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(v, f"{path}[{i}]", lines, file, budget) for i, v in enumerate(node.value)]
    return _scalar(node, file, path)


def _scalar(node: yaml.Node, file: Path, key: str) -> Any:
    """A scalar by YAML's safe rules: a tag such as !!python/name is a usage error naming file, line and key."""
    try:
        return yaml.safe_load(yaml.serialize(node))
    except yaml.YAMLError as exc:
        raise _yaml_error(file, exc, node.start_mark, key) from exc


def _parse(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    if not path.is_file():
        raise UsageError(f"recipe not found: {path}")
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise UsageError(f"{path}: {path.stat().st_size:,} bytes, larger than a recipe can be ({MAX_RECIPE_BYTES:,})")
    lines: dict[str, int] = {}
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            return tomllib.loads(path.read_text()), lines
        node = yaml.compose(path.read_text())
    except yaml.YAMLError as exc:
        raise _yaml_error(path, exc)
    except Exception as exc:  # TOML errors say "(at line N, column M)"; undecodable bytes
        raise UsageError(f"{path}: not a valid recipe file ({' '.join(str(exc).split())[:200]})")
    data = _to_python(node, "", lines, path, [MAX_VALUES]) if node is not None else {}
    return data, lines


def _check_keys(obj: Any, allowed: tuple[str, ...], what: str, recipe: Recipe, prefix: str) -> dict[str, Any]:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise UsageError(f"{recipe.where(prefix)}: {what} must be a mapping")
    for key in obj:
        if key not in allowed:
            raise UsageError(f"{recipe.where(f'{prefix}.{key}' if prefix else key)}: unknown key {key!r} in {what}; "
                             f"valid keys: {', '.join(allowed)}")
    return obj


def load_recipe(path: Path) -> Recipe:
    """Parse and validate a recipe (stage names and options, run settings)."""
    data, lines = _parse(path)
    recipe = Recipe(path, [], {}, lines)
    data = _check_keys(data, TOP_KEYS, "the recipe", recipe, "")
    raw_stages = data.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        raise UsageError(f"{recipe.where('stages')}: 'stages' must be a non-empty list of stages")
    for i, item in enumerate(raw_stages):
        recipe.stages.append(_stage_entry(recipe, f"stages[{i}]", item))
    recipe.settings["data"] = _check_keys(data.get("data"), DATA_KEYS, "data", recipe, "data")
    recipe.settings["gates"] = _check_gates(recipe, _check_keys(data.get("gates"), GATE_KEYS, "gates", recipe,
                                                                "gates"))
    for key, value in recipe.settings["data"].items():
        if value is not None and not isinstance(value, str):
            raise UsageError(f"{recipe.where('data.' + key)}: data.{key} must be a file path, got {value!r}")
    _check_run_settings(recipe, data)
    recipe.settings["output_metrics"] = _check_output_metrics(recipe, data.get("output_metrics"))
    recipe.settings.update({key: data[key] for key in RUN_KEYS if key in data})
    return recipe


def _stage_entry(recipe: Recipe, key: str, item: Any) -> tuple[str, dict, int | None]:
    """One entry of `stages`: a name, or a one-key mapping `stage: {options}`, each option checked on its line."""
    if isinstance(item, str):
        name, opts = item, {}
    elif isinstance(item, dict) and len(item) == 1:
        name, opts = next(iter(item.items()))
        opts = opts or {}
        key = f"{key}.{name}"
    else:
        raise UsageError(f"{recipe.where(key)}: each stage is a name or a one-key mapping 'stage: {{options}}'")
    if not isinstance(opts, dict):
        raise UsageError(f"{recipe.where(key)}: options of stage {name!r} must be a mapping")
    try:
        cls = get_stage(name)
    except UsageError as exc:
        raise UsageError(f"{recipe.where(key)}: {exc}")
    for opt, value in opts.items():  # validate each option with its own line number
        build_config(cls, {opt: value}, where=recipe.where(f"{key}.{opt}"))
    return name, dict(opts), recipe.lines.get(key)


def _check_gates(recipe: Recipe, gates: dict) -> dict:
    floors = gates.get("floors")
    if floors is not None and not (isinstance(floors, dict) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in floors.values())):
        raise UsageError(f"{recipe.where('gates.floors')}: floors must map metric names to numbers")
    return gates


def _check_output_metrics(recipe: Recipe, value: Any) -> dict[str, str]:
    """`output_metrics: {NAME: KIND}`, each kind checked like --output-metric NAME=KIND."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UsageError(f"{recipe.where('output_metrics')}: output_metrics must map output names to a metric")
    try:
        return parse_output_metrics(value)
    except UsageError:
        kinds = ", ".join(OUTPUT_KINDS)
        raise UsageError(f"{recipe.where('output_metrics')}: output_metrics: each output's metric must be one of "
                         f"{kinds} (got {value!r})") from None


def _check_run_settings(recipe: Recipe, data: dict) -> None:
    """Every run setting the recipe holds, parsed and range-checked by its declaration (run/settings.py)."""
    for name, f in SETTINGS.items():
        value = recipe_value({**data, "gates": recipe.settings["gates"]}, name)
        key = f.metadata["recipe"]
        if value is not None:
            value = parse_setting(name, value, f"{recipe.where(key)}: {key}")
        if name == "device" and value is not None and (problem := device_problem(value)):
            raise UsageError(f"{recipe.where(key)}: {problem}")


def resolved_recipe(options, stages) -> str:
    """YAML of the run as executed: every run setting that has a value, the data, every gate, and every stage
    option (defaults filled in)."""
    def s(p):
        return None if p is None else str(p)

    top = {f.metadata["recipe"]: getattr(options, name) for name, f in SETTINGS.items()
           if "." not in f.metadata["recipe"] and getattr(options, name) is not None}
    gates = {f.metadata["recipe"].split(".")[1]: getattr(options, name) for name, f in SETTINGS.items()
             if f.metadata["recipe"].startswith("gates.")}
    doc = {
        **top,
        "data": {"heldout": s(options.data), "train": s(options.train_data), "val": s(options.val_data),
                 "calib": s(options.calib_data)},
        "gates": {**gates, "floors": dict(options.floors)},
        **({"output_metrics": dict(options.output_metrics)} if options.output_metrics else {}),
        "stages": [{st.name: config_as_dict(st.config)} for st in stages],
    }
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
