"""Zip checkpoints (`.pt2`, TorchScript, `torch.save`) checked before torch reads them, and torch kept quiet.

torch's zip reader (miniz) never verifies a member's CRC-32: a flipped byte in a weight loads as a different
weight and the run reports a wrong baseline with exit 0. So every member is read once and CRC-checked
(`zipfile.testzip`), the central directory must agree with the local headers, and directory entries or
duplicate names (which make miniz read the wrong bytes) are refused. A file that starts like a zip but has no
end-of-archive record is called truncated. Names are compared ignoring case, as miniz looks them up.

Before any member is inflated, the central directory is held to two limits (a zip bomb is refused in
milliseconds, and memory stays within a small multiple of the file's honest size): the total declared
uncompressed size (COMPRESSOR_MAX_UNPACKED_BYTES, default 16 GiB) and the compression ratio of each member over
1 MiB and of the whole archive (COMPRESSOR_MAX_ZIP_RATIO, default 100; torch stores its members uncompressed,
ratio 1). Entries whose compressed data would overlap (more compressed bytes declared than the file holds) are
refused too. The same limits hold for `.npz` and `.pt` data files and for an archive nested in a `.pt2` member.
`quiet_loaders` keeps torch's logged tracebacks and warnings off stderr (it logs the whole traceback of a failed
deserialisation before raising) unless COMPRESSOR_DEBUG is set.
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
LIMIT_ENV = {"bytes": "COMPRESSOR_MAX_UNPACKED_BYTES", "ratio": "COMPRESSOR_MAX_ZIP_RATIO"}
DEFAULT_MAX_UNPACKED = 16 << 30
DEFAULT_MAX_RATIO = 100
RATIO_FLOOR = 1 << 20  # members up to this size are not held to the ratio (small, highly compressible text)


def debug_enabled() -> bool:
    return bool(os.environ.get("COMPRESSOR_DEBUG"))


def env_limit(name: str, default: int) -> int:
    """A limit from the environment variable `name` (`1e9` reads too); unset or unreadable, `default`."""
    raw = os.environ.get(name, "")
    try:
        return int(float(raw)) if raw.strip() else default
    except ValueError:
        return default


def check_limits(zf: zipfile.ZipFile, what: str, size: int, error: type[Exception] = ModelLoadError) -> None:
    """Refuse an archive whose central directory promises more than the limits allow (nothing inflated yet)."""
    infos = zf.infolist()
    max_total = env_limit(LIMIT_ENV["bytes"], DEFAULT_MAX_UNPACKED)
    max_ratio = env_limit(LIMIT_ENV["ratio"], DEFAULT_MAX_RATIO)
    total = sum(i.file_size for i in infos)
    hint = "raise {} if you trust this file"
    if total > max_total:
        raise error(f"{what}: declares {total:,} bytes uncompressed, more than the limit of {max_total:,} "
                    "(a zip bomb?); " + hint.format(LIMIT_ENV["bytes"]))
    for i in infos:
        if i.file_size > RATIO_FLOOR and i.file_size > max_ratio * max(i.compress_size, 1):
            raise error(f"{what}: member {i.filename} expands {i.file_size / max(i.compress_size, 1):,.0f}x "
                        f"(limit {max_ratio}x; a zip bomb?); " + hint.format(LIMIT_ENV["ratio"]))
    if total > RATIO_FLOOR and total > max_ratio * max(size, 1):
        raise error(f"{what}: members expand {total / max(size, 1):,.0f}x the file's size (limit "
                    f"{max_ratio}x; a zip bomb?); " + hint.format(LIMIT_ENV["ratio"]))
    if sum(i.compress_size for i in infos) > size:
        raise error(f"{what}: corrupt archive: members declare more compressed bytes than the file holds "
                    "(overlapping entries)")
    seen: set[str] = set()
    for name in (i.filename.lower() for i in infos):
        if name in seen:
            raise error(f"{what}: corrupt archive: duplicate member names ({name}; compared ignoring case, as "
                        "torch looks them up)")
        seen.add(name)


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
            check_limits(zf, str(path), path.stat().st_size)
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
