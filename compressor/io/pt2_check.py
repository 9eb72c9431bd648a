"""A `.pt2` checked, before torch reads it, for everything in it that would run code; torch's loaders called here.

`torch.export.load` (torch 2.13: torch/export/pt2_archive/_package.py, torch/_export/serde/serialize.py) runs
code from the file in these places:
- a weight or tensor constant marked `"use_pickle": true` in `data/weights/<model>_weights_config.json` or
  `data/constants/<model>_constants_config.json`: `torch.load(weights_only=False)` of the member it names;
- a constant stored as `custom_obj_*` (TorchScript's unpickler) or `opaque_obj_*` (`pickle.loads`);
- `data/sample_inputs/<model>.pt`, the legacy `data/weights/<model>.pt` and `data/constants/<model>.pt`, and the
  older format's `serialized_*.pt`: `torch.load(weights_only=True)`, and when that fails `weights_only=False`;
- AOTInductor members (`data/aotinductor/`): a compiled shared library, loaded;
- the program JSON: a symbolic size is parsed by `sympy.sympify` (Python's `eval`), and a node's target is any
  attribute path under `torch`, `math` or `_operator`, called when the model runs.
So, unless the caller trusts the file (--trust-pickle): a pickled weight or constant, a custom or opaque object
and AOTInductor code are refused, naming the member; every `.pt` member must load with `weights_only=True` (so
torch's fallback never fires), its own archive within the zip limits; a symbolic expression may hold only
sympy arithmetic, symbol names and numbers; a node's target must be a torch operator (`torch.ops.*`), a math
function or an arithmetic operator. Member names match ignoring case, as torch's zip reader looks them up.
While torch reads the file TORCH_FORCE_WEIGHTS_ONLY_LOAD is set: a `torch.load` this check missed cannot
unpickle code either.
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import os
import re
import zipfile
from pathlib import Path

import torch

from compressor.errors import ModelLoadError
from compressor.io.archive import ZIP_MAGIC, check_limits, zip_names

TRUST_HINT = "which runs code from the file: refused (pass --trust-pickle only if you trust its source)"
CONFIG_SUFFIXES = ("_weights_config.json", "_constants_config.json")
SYMPY_NAMES = frozenset(
    "Symbol Integer Rational Float Add Mul Pow Mod Max Min Abs Eq Ne Lt Le Gt Ge And Or Not Xor Piecewise "
    "ExprCondPair floor ceiling sqrt oo zoo nan true false True False None Infinity NegativeInfinity Zero One "
    "NegativeOne Half BooleanTrue BooleanFalse StrictLessThan StrictGreaterThan LessThan GreaterThan Equality "
    "Unequality FloorDiv ModularIndexing Where PythonMod CleanDiv CeilToInt IntTrueDiv FloatTrueDiv LShift RShift "
    "IsNonOverlappingAndDenseIndicator TruncToFloat TruncToInt RoundToInt RoundDecimal ToFloat Identity "
    "PowByNatural FloatPow".split())
GENERATED_FN = re.compile(r"(OpaqueUnaryFn|BitwiseFn)_[a-z_]+")
SYMBOL = re.compile(r"[a-z]+\d+")
TOKEN = re.compile(r"\s+|'[A-Za-z0-9_.+\-]*'|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|[A-Za-z_]\w*|==|!=|<=|>=|\*\*|//"
                   r"|[-+*/%<>(),=&|~^]")
IDENT = re.compile(r"[A-Za-z_]\w*")
OPERATORS = frozenset("getitem add sub mul truediv floordiv mod pow neg pos eq ne lt le gt ge and_ or_ xor not_ "
                      "invert abs lshift rshift".split())
TORCH_TARGETS = frozenset(
    ["torch.sym_int", "torch.sym_float", "torch.sym_max", "torch.sym_min", "torch.sym_not", "torch.sym_ite",
     "torch.sym_sqrt", "torch._sym_sqrt", "torch.sym_sum", "torch._C._set_grad_enabled",
     "torch.amp.autocast_mode._enter_autocast", "torch.amp.autocast_mode._exit_autocast"]
    + [f"torch._functorch.predispatch.{n}" for n in ("_add_batch_dim", "_remove_batch_dim", "_vmap_increment_nesting",
                                                     "_vmap_decrement_nesting", "lazy_load_decompositions")])
FORCE_ENV, NO_FORCE_ENV = "TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


def _refuse(path: Path, member: str, what: str) -> ModelLoadError:
    return ModelLoadError(f"{path}: member {member} {what}, {TRUST_HINT}")


def check_pt2(path: Path) -> None:
    """Raise ModelLoadError naming the first member torch would run code from (see the module docstring)."""
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            name, low = info.filename, info.filename.lower()
            if "data/aotinductor/" in low:
                raise _refuse(path, name, "is AOTInductor compiled code; torch would load it as a shared library")
            if low.endswith(CONFIG_SUFFIXES):
                _check_payload_config(_json(zf, info, path), name, path)
            elif low.endswith(".json"):
                _check_program(_json(zf, info, path), name, path)
            elif low.endswith(".pt"):
                _check_weights_only(zf.read(info), name, path)


def _json(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path):
    try:
        return json.loads(zf.read(info).decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelLoadError(f"{path}: member {info.filename} is not valid JSON ({type(exc).__name__})") from exc


def _check_payload_config(doc, name: str, path: Path) -> None:
    """Weights and constants configs: no pickled payload, no custom or opaque Python object."""
    entries = doc.get("config") if isinstance(doc, dict) else None
    if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):
        raise ModelLoadError(f"{path}: member {name} is not a torch payload config")
    folder = name.rpartition("/")[0]
    for fqn, entry in entries.items():
        payload = f"{folder}/{entry.get('path_name')}"
        if entry.get("use_pickle", False) is not False:
            raise _refuse(path, payload, f"is pickled ({fqn}: use_pickle in {name}); torch would unpickle it")
        if str(entry.get("path_name", "")).startswith(("custom_obj_", "opaque_obj_")):
            raise _refuse(path, payload, f"is a pickled Python object ({fqn} in {name}); torch would unpickle it")


def _check_weights_only(data: bytes, name: str, path: Path) -> None:
    """A `.pt` member torch loads with weights_only=True first and, if that fails, with False: make it succeed."""
    if not data:
        return
    if data[:4] == ZIP_MAGIC:
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as inner:
                check_limits(inner, f"{path}: member {name}", len(data))
        except zipfile.BadZipFile:
            pass  # torch.load below refuses it
    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:
        raise _refuse(path, name, f"does not load as plain tensors ({type(exc).__name__}); torch would "
                                  "then unpickle it in full") from exc


def _check_program(doc, name: str, path: Path) -> None:
    """Every symbolic expression and node target in a program JSON (walked without recursion)."""
    stack = [doc]
    while stack:
        obj = stack.pop()
        if isinstance(obj, list):
            stack.extend(obj)
        elif isinstance(obj, dict):
            expr, target = obj.get("expr_str"), obj.get("target")
            if isinstance(expr, str) and not safe_expression(expr):
                raise _refuse(path, name, f"holds a symbolic expression that is not plain arithmetic ({expr[:80]!r}); "
                                          "torch would eval it")
            if isinstance(target, str) and "inputs" in obj and not safe_target(target):
                raise _refuse(path, name, f"calls {target[:80]!r}, not a torch operator; the model would run it")
            stack.extend(obj.values())


def safe_expression(expr: str) -> bool:
    """Only sympy arithmetic: allowed names, symbol names (s0, u3), numbers, quoted names, keyword arguments."""
    tokens, pos = [], 0
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if m is None:
            return False
        if not m.group().isspace():
            tokens.append(m.group())
        pos = m.end()
    for i, tok in enumerate(tokens):
        if IDENT.fullmatch(tok):
            keyword = i + 1 < len(tokens) and tokens[i + 1] == "="
            if not (keyword or tok in SYMPY_NAMES or SYMBOL.fullmatch(tok) or GENERATED_FN.fullmatch(tok)):
                return False
    return True


@functools.cache
def dunder_operators() -> frozenset[str]:
    """The registered operators whose name is a dunder ("aten::__and__", "aten::__lshift__", ...)."""
    names = getattr(torch._C, "_dispatch_get_all_op_names", lambda: [])()  # private: none if it ever goes
    return frozenset(n.split(".")[0] for n in names if "::__" in n)


def safe_target(target: str) -> bool:
    """A graph node may call a torch operator, a math function, an arithmetic operator or a few torch helpers."""
    if target.startswith("#"):  # an extension operator: resolved by registered plugins of torch, refused
        return False
    if target.startswith("torch.ops."):
        parts = target.split(".")[2:]
        if not (2 <= len(parts) <= 3 and all(IDENT.fullmatch(p) for p in parts)):
            return False
        # a dunder name is refused (an attribute of Python's object model) unless it is a registered operator's,
        # such as aten::__and__ (the `&` of an attention mask); an overload name is never a dunder
        dunder = [p for p in parts if p.startswith("__")]
        return not dunder or (dunder == [parts[1]] and f"{parts[0]}::{parts[1]}" in dunder_operators())
    if target.startswith("_operator."):
        return target[len("_operator."):] in OPERATORS
    if target.startswith("math."):
        fn = target[len("math."):]
        return IDENT.fullmatch(fn) is not None and not fn.startswith("_") and callable(getattr(math, fn, None))
    if target.startswith(("torch", "_operator", "math")):
        return target in TORCH_TARGETS
    return True  # torch keeps any other target as a string (not callable): the graph fails to build


@contextlib.contextmanager
def weights_only_forced():
    """Every `torch.load` inside runs with weights_only=True, whatever its call site asks."""
    saved = {k: os.environ.get(k) for k in (FORCE_ENV, NO_FORCE_ENV)}
    os.environ[FORCE_ENV] = "1"
    os.environ.pop(NO_FORCE_ENV, None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def load_program(path: Path, trust_pickle: bool = False, checked: bool = False) -> torch.export.ExportedProgram:
    """`torch.export.load` after the archive check (CRC, limits) and, unless trusted, the code check above."""
    if not checked:
        zip_names(path)
    if trust_pickle:
        return torch.export.load(str(path))
    check_pt2(path)
    with weights_only_forced():
        return torch.export.load(str(path))


def load_torchscript(path: Path, checked: bool = False) -> torch.jit.ScriptModule:
    """`torch.jit.load` after the archive check (TorchScript's own unpickler resolves no Python globals)."""
    if not checked:
        zip_names(path)
    with weights_only_forced():
        return torch.jit.load(str(path), map_location="cpu")
