"""`--arch package.module:factory` or `--arch path/to/file.py:factory`: the architecture of a state_dict, built by
calling the user's factory (code the user named on the command line; `compressor.load` calls it only when the
caller opts in with `trust_code`)."""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from torch import nn

from compressor.errors import ModelLoadError, Terminated, UsageError


def resolve_arch(spec: str) -> nn.Module:
    """Build a module from ``package.module:factory`` or ``path/to/file.py:factory`` (cwd importable)."""
    if ":" not in spec:
        raise UsageError(f"--arch {spec!r}: expected 'package.module:factory' or 'path/to/file.py:factory'")
    target, _, attr = spec.rpartition(":")
    try:
        if target.endswith(".py"):
            file = Path(target)
            if not file.is_file():
                raise ModelLoadError(f"--arch: file not found: {file}")
            mod_name = "compressor_arch_" + hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:12]
            spec_obj = importlib.util.spec_from_file_location(mod_name, file)
            module = importlib.util.module_from_spec(spec_obj)
            sys.modules[mod_name] = module
            spec_obj.loader.exec_module(module)
        else:
            if str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(target)
    except ModelLoadError:
        raise
    except (KeyboardInterrupt, Terminated):
        raise
    except BaseException as exc:  # SystemExit(0) included: code that exits is a failed import, never a success
        raise ModelLoadError(f"--arch {spec!r}: cannot import {target}: {type(exc).__name__}: {exc}")
    factory = getattr(module, attr, None)
    if factory is None:
        raise ModelLoadError(f"--arch {spec!r}: {target} has no attribute {attr!r}")
    try:
        model = factory()
    except (KeyboardInterrupt, Terminated):
        raise
    except BaseException as exc:
        raise ModelLoadError(f"--arch {spec!r}: calling {attr}() failed: {type(exc).__name__}({exc})")
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"--arch {spec!r}: {attr}() returned {type(model).__name__}, not an nn.Module")
    return model


def arch_source(spec: str | None) -> Path | None:
    """The file an --arch spec's code is read from (the .py path, or the module's file as the import would find
    it), so that a checkpoint can tell an edited architecture from the one it was made with; None if not found."""
    if not spec or ":" not in spec:
        return None
    target = spec.rpartition(":")[0]
    if target.endswith(".py"):
        path: Path | None = Path(target)
    else:
        if str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))
        try:
            found = importlib.util.find_spec(target)
        except (KeyboardInterrupt, Terminated):
            raise
        except BaseException:  # a package that fails to import, or exits: the model's load reports it
            return None
        path = Path(found.origin) if found is not None and found.origin else None
    return path if path is not None and path.is_file() else None
