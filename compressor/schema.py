"""The one declarative layer for options: every stage option and every run setting is a dataclass field declared
with `option(default, help, ge=..., gt=..., le=..., lt=...)`, so its type, default, help and range live in one place.

From that declaration, and nothing else:
- `--set stage.key=value`, recipe values and run settings are parsed from the field's type (`parse_value`) and
  checked against its range (`range_problem`): a bad value is a usage error naming the key and the range;
- `compress stages`, `compress --help` defaults and docs/options.md are written (`describe`, `options_markdown`);
- `with_default(Base, name, value)` re-declares a shared field (e.g. of the fine-tuning mixin) with another default
  and the same help and range.

Checks that involve two fields (e.g. "set one of ring_size and ring_fraction") stay in the config's `validate()`.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from compressor.errors import UsageError

BOUND_KEYS = ("ge", "gt", "le", "lt")
_SYMBOLS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def option(default: Any, help: str, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None, **meta: Any) -> Any:
    """A config field with its one-line help and its range (bounds apply to a number, or to each item of a list;
    None, when the type allows it, is always in range)."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    metadata = {"help": help, **bounds, **meta}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def with_default(base: type, name: str, default: Any) -> Any:
    """`base`'s field `name` with another default (same help and range), for a config that shares the field."""
    source = next(f for f in dataclasses.fields(base) if f.name == name)
    return field(default=default, metadata=dict(source.metadata))


def fields_of(config_cls: type) -> list[dataclasses.Field]:
    return list(dataclasses.fields(config_cls))


def field_types(config_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(config_cls)


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def range_text(f: dataclasses.Field) -> str:
    """The field's range in words ('> 0 and < 1'), '' when unbounded."""
    return " and ".join(f"{_SYMBOLS[k]} {_number(f.metadata[k])}" for k in BOUND_KEYS if k in f.metadata)


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def range_problem(f: dataclasses.Field, value: Any) -> str | None:
    """Why `value` is outside the field's range (None when it is within, or the field has no range)."""
    if value is None or not any(k in f.metadata for k in BOUND_KEYS):
        return None
    items = value if isinstance(value, (tuple, list)) else (value,)
    m = f.metadata
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            continue  # a Literal or a word alternative (e.g. finetune=auto): its type already checked it
        if (("ge" in m and not item >= m["ge"]) or ("gt" in m and not item > m["gt"])
                or ("le" in m and not item <= m["le"]) or ("lt" in m and not item < m["lt"])):
            return f"{f.name} must be {range_text(f)} (got {_number(item)})"
    return None


def check_ranges(config: Any) -> str | None:
    """The first field of `config` outside its declared range, in words (None: all within)."""
    for f in fields_of(type(config)):
        problem = range_problem(f, getattr(config, f.name))
        if problem:
            return problem
    return None


def type_label(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "|".join(str(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        return "list"
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(tp)
        label = "|".join(type_label(a) for a in args if a is not type(None))
        return label + " or none" if type(None) in args else label
    return getattr(tp, "__name__", str(tp))


def _is_none(raw: Any) -> bool:
    return raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null", ""))


def parse_value(tp: Any, raw: Any, where: str) -> Any:
    """Coerce a string (or a recipe value) to the field's type, or raise a UsageError naming the choices."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        if _is_none(raw) and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return parse_value(a, raw, where)
            except UsageError:
                continue
        raise UsageError(f"{where}: {raw!r} is not a valid {type_label(tp)}")
    if origin is Literal:
        choices = [str(a) for a in args]
        if str(raw) not in choices:
            raise UsageError(f"{where}: {raw!r} is not one of {', '.join(choices)}")
        return next(a for a in args if str(a) == str(raw))
    if origin in (tuple, list):
        items = raw if isinstance(raw, (list, tuple)) else [s for s in str(raw).split(",") if s.strip()]
        inner = args[0] if args else str
        return tuple(parse_value(inner, str(i).strip(), where) for i in items)
    parser = _SCALARS.get(tp)
    if parser is None:
        raise UsageError(f"{where}: unsupported option type {tp}")
    return parser(raw, where)


def _bool(raw: Any, where: str) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"{where}: {raw!r} is not a boolean (true/false)")


def _int(raw: Any, where: str) -> int:
    try:
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError
        return int(raw) if not isinstance(raw, str) else int(raw.strip())
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"{where}: {raw!r} is not an integer")


def _float(raw: Any, where: str) -> float:
    try:
        if isinstance(raw, bool):
            raise ValueError
        value = float(raw)
    except (TypeError, ValueError):
        raise UsageError(f"{where}: {raw!r} is not a number")
    if not math.isfinite(value):
        raise UsageError(f"{where}: {raw!r} is not a finite number")
    return value


def _str(raw: Any, where: str) -> str:
    return str(raw)


_SCALARS = {bool: _bool, int: _int, float: _float, str: _str}


def parse_field(config_cls: type, key: str, raw: Any, where: str) -> Any:
    """One raw value parsed to the type of `config_cls`'s field `key` and checked against its range."""
    f = next(f for f in fields_of(config_cls) if f.name == key)
    value = parse_value(field_types(config_cls)[key], raw, where)
    problem = range_problem(f, value)
    if problem:
        raise UsageError(f"{where}: {problem}")
    return value


def build(config_cls: type, values: dict[str, Any], where: str, prefix: str = "") -> Any:
    """A validated `config_cls` from raw values: unknown keys, mistyped values, values out of range and a failed
    `validate()` are usage errors naming `where` and the key."""
    names = {f.name for f in fields_of(config_cls)}
    kwargs = {}
    for key, raw in values.items():
        if key not in names:
            valid = ", ".join(sorted(names)) or "(none)"
            raise UsageError(f"{where}: unknown option {prefix}{key}; valid options: {valid}")
        kwargs[key] = parse_field(config_cls, key, raw, f"{where} {prefix}{key}")
    config = config_cls(**kwargs)
    problem = check_ranges(config) or (config.validate() if hasattr(config, "validate") else None)
    if problem:
        raise UsageError(f"{where} {prefix.rstrip('.')}: {problem}")
    return config


def config_as_dict(config: Any) -> dict[str, Any]:
    out = {}
    for f in fields_of(type(config)):
        v = getattr(config, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


@dataclass(frozen=True)
class OptionDoc:
    """One option as `compress stages` and docs/options.md show it."""

    name: str
    type: str
    default: str
    range: str
    help: str


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "(none)"
    return "(none)" if value is None else str(value)


def describe(config_cls: type) -> list[OptionDoc]:
    types_ = field_types(config_cls)
    return [OptionDoc(f.name, "duration" if f.metadata.get("duration") else type_label(types_[f.name]),
                      _shown(default_of(f)), range_text(f), f.metadata.get("help", "")) for f in fields_of(config_cls)]
