"""The output directory: refuse to clobber, stage every file in a sibling temp dir, move in at the end.

A crash leaves nothing half-written in ``--out``: files are only moved there (``os.replace``) once complete.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from compressor.errors import OutputError


class OutputDir:
    def __init__(self, out: Path, force: bool, inputs: list[Path]) -> None:
        self.out = out
        self.force = force
        if out.exists() and not out.is_dir():
            raise OutputError(f"--out {out} exists and is not a directory")
        if out.is_dir() and any(out.iterdir()) and not force:
            raise OutputError(f"--out {out} exists and is not empty; pass --force to overwrite its files")
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
            if target.is_dir() and not f.is_dir():
                shutil.rmtree(target)
            os.replace(f, target)
        shutil.rmtree(self.staging, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
