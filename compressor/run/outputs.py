"""The output directory: refuse to clobber, stage every file in a sibling temp dir, move in at the end.

A crash leaves nothing half-written in ``--out``: files are only moved there (``os.replace``) once complete.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from compressor.errors import OutputError


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True


class OutputDir:
    def __init__(self, out: Path, force: bool, inputs: list[Path], resume: bool = False) -> None:
        self.out = out
        self.force = force
        if out.exists() and not out.is_dir():
            raise OutputError(f"--out {out} exists and is not a directory")
        if out.is_dir() and any(out.iterdir()) and not (force or resume):
            hint = " (or --resume to continue an interrupted run)" if (out / ".checkpoints").is_dir() else ""
            raise OutputError(f"--out {out} exists and is not empty; pass --force to overwrite its files{hint}")
        resolved_out = out.resolve()
        for p in inputs:
            if p.resolve().parent == resolved_out:
                raise OutputError(f"--out {out} holds the input {p.name}; choose another output directory")
        parent = resolved_out.parent
        if not parent.exists():
            try:
                parent.mkdir(parents=True)
            except OSError as exc:
                raise OutputError(f"--out {out}: cannot create parent directory ({exc.strerror})")
        self.staging = parent / f".{out.name}.tmp-{os.getpid()}"
        if resume:  # staging directories left by the interrupted run (never one of a live process)
            for stale in parent.glob(f".{out.name}.tmp-*"):
                if not _alive(stale.name.rpartition("-")[2]):
                    shutil.rmtree(stale, ignore_errors=True)
        try:
            if self.staging.exists():
                shutil.rmtree(self.staging)
            self.staging.mkdir()
        except OSError as exc:
            raise OutputError(f"--out {out}: directory is not writable ({exc.strerror})")

    def path(self, name: str) -> Path:
        return self.staging / name

    def commit(self) -> None:
        """Move the finished files into --out (a rename of the whole directory when possible)."""
        if self.out.is_dir() and not any(self.out.iterdir()):
            self.out.rmdir()
        if not self.out.exists():
            os.replace(self.staging, self.out)
            return
        for f in sorted(self.staging.iterdir()):
            target = self.out / f.name
            if f.is_dir() and target.is_dir():
                shutil.rmtree(target)
            if target.is_dir() and not f.is_dir():
                shutil.rmtree(target)
            os.replace(f, target)
        shutil.rmtree(self.staging, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
