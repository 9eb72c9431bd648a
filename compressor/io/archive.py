"""Zip checkpoints (`.pt2`, TorchScript, `torch.save`) checked before torch reads them, and torch kept quiet.

torch's zip reader (miniz) never verifies a member's CRC-32: a flipped byte in a weight loads as a different
weight and the run reports a wrong baseline with exit 0. So every member is read once and CRC-checked
(`zipfile.testzip`), the central directory must agree with the local headers, and directory entries or
duplicate names (which make miniz read the wrong bytes) are refused. A file that starts like a zip but has no
end-of-archive record is called truncated. `quiet_loaders` keeps torch's logged tracebacks and warnings off
stderr (it logs the whole traceback of a failed deserialisation before raising) unless COMPRESSOR_DEBUG is set.
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
import zipfile
from pathlib import Path

from compressor.errors import ModelLoadError

ZIP_MAGIC = b"PK\x03\x04"
QUIET_LOGGERS = ("torch", "onnx", "onnxruntime", "onnxscript")


def debug_enabled() -> bool:
    return bool(os.environ.get("COMPRESSOR_DEBUG"))


def zip_names(path: Path) -> list[str]:
    """Member names of a well-formed, CRC-clean zip archive; [] when the file is not a zip at all."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head != ZIP_MAGIC and not zipfile.is_zipfile(path):
        return []
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            if len(set(names)) != len(names):
                raise ModelLoadError(f"{path}: corrupt archive: duplicate member names")
            bad_dir = next((i.filename for i in infos if i.is_dir() or i.external_attr & 0x10), None)
            if bad_dir is not None:
                raise ModelLoadError(f"{path}: corrupt archive: member {bad_dir} is marked as a directory")
            bad = zf.testzip()
    except ModelLoadError:
        raise
    except zipfile.BadZipFile as exc:
        if "End-of-central-directory" in str(exc) or "not a zip file" in str(exc).lower():
            raise ModelLoadError(f"{path}: truncated or damaged zip archive (no end-of-archive record)") from exc
        raise ModelLoadError(f"{path}: corrupt archive ({exc})") from exc
    except Exception as exc:  # bad member names (UnicodeDecodeError), impossible offsets, short reads
        raise ModelLoadError(f"{path}: corrupt archive ({type(exc).__name__}: {str(exc)[:160]})") from exc
    if bad is not None:
        raise ModelLoadError(f"{path}: corrupt archive: member {bad} fails its CRC check")
    return names


@contextlib.contextmanager
def quiet_loaders():
    """Silence third-party logging and warnings while a loader runs (shown again with COMPRESSOR_DEBUG)."""
    if debug_enabled():
        yield
        return
    loggers = [logging.getLogger(n) for n in QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
