"""The output directory: refuse to clobber, stage every file in a sibling temp dir, swap it in at the end.

A crash leaves nothing half-written in ``--out``: the run writes into ``.<out>.tmp-<pid>`` beside it, and only
a complete directory is renamed into place. A run claims ``--out`` first by creating ``.<out>.lock`` beside it
exclusively (O_EXCL, holding its pid), and only then looks at ``--out``: a second run into the same path while
one is under way is refused with one line, whether or not it has --force; a lock whose pid is dead is taken
over. A symbolic link as ``--out`` (to a directory, or dangling) is refused before any work: replacing it
would replace the link, not the directory it names. Without ``--force`` the new directory is renamed onto an
absent or empty ``--out`` (a directory that filled up meanwhile is never replaced). With ``--force`` (or
``--resume``) over an existing ``--out`` the commit is rename(out -> ``.<out>.old-<pid>``), rename(staging ->
out), then remove the old one: a failure at any point leaves the old directory whole (and no debris);
``--force`` replaces the directory wholesale, so files a user put in it are not kept. Staging and old siblings
of a crashed run (their pid dead) are removed by the next run.
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

from compressor.errors import OutputError

CKPT_DIR = ".checkpoints"  # lives in --out itself (so --resume finds it); carried into the new directory


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True


def remove_dead_debris(parent: Path, pattern: str) -> None:
    """Remove what a crashed run of ours left (names ending in -<pid> of a dead process; never a live one's)."""
    for stale in parent.glob(pattern):
        if not _alive(stale.name.rpartition("-")[2]):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def _read_only(path: Path) -> bool:
    return not (path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) or not os.access(path, os.W_OK)


def claim(lock: Path, out: Path) -> None:
    """Create the lock beside --out exclusively (a dead run's lock is taken over once)."""
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                pid = lock.read_text().strip()
            except OSError:
                pid = ""
            if pid and not _alive(pid):
                lock.unlink(missing_ok=True)
                continue
            raise OutputError(f"--out {out} is being written by another compress run (pid {pid or '?'}, lock "
                              f"{lock}); wait for it or choose another --out")
        except OSError as exc:
            raise OutputError(f"--out {out}: its directory is not writable (cannot create {lock.name}: "
                              f"{exc.strerror})") from exc
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        return
    raise OutputError(f"--out {out}: cannot take over the stale lock {lock}")


class OutputDir:
    def __init__(self, out: Path, force: bool, inputs: list[Path], resume: bool = False) -> None:
        self.out = out
        self.force = force or resume
        if out.is_symlink():
            raise OutputError(f"--out {out} is a symbolic link (to {os.readlink(out)}); pass the directory itself "
                              "or another path")
        parent = out.resolve().parent
        if not parent.exists():
            try:
                parent.mkdir(parents=True)
            except OSError as exc:
                raise OutputError(f"--out {out}: cannot create parent directory ({exc.strerror})")
        self.lock = parent / f".{out.name}.lock"
        claim(self.lock, out)
        try:
            self._check(out, force, inputs, resume)
        except BaseException:
            self.lock.unlink(missing_ok=True)
            raise

    def _check(self, out: Path, force: bool, inputs: list[Path], resume: bool) -> None:
        if out.exists() and not out.is_dir():
            raise OutputError(f"--out {out} exists and is not a directory")
        if out.is_dir() and any(out.iterdir()) and not (force or resume):
            hint = " (or --resume to continue an interrupted run)" if (out / CKPT_DIR).is_dir() else ""
            raise OutputError(f"--out {out} exists and is not empty; pass --force to replace it{hint}")
        if out.is_dir() and _read_only(out):
            raise OutputError(f"--out {out} is read-only (not writable); choose another directory or change its mode")
        resolved_out = out.resolve()
        for p in inputs:
            if resolved_out in p.resolve().parents:
                raise OutputError(f"--out {out} holds the input {p.name}; choose another output directory")
            if p.is_dir() and (resolved_out == p.resolve() or p.resolve() in resolved_out.parents):
                raise OutputError(f"--out {out} is, or is inside, the input directory {p}; choose another output "
                                  "directory")
        parent = resolved_out.parent
        self.staging = parent / f".{out.name}.tmp-{os.getpid()}"
        self.old = parent / f".{out.name}.old-{os.getpid()}"
        remove_dead_debris(parent, f".{out.name}.tmp-*")
        remove_dead_debris(parent, f".{out.name}.old-*")
        try:
            if self.staging.exists():
                shutil.rmtree(self.staging)
            self.staging.mkdir()
        except OSError as exc:
            raise OutputError(f"--out {out}: directory is not writable ({exc.strerror})")

    def path(self, name: str) -> Path:
        return self.staging / name

    def clear(self) -> None:
        """Empty the staging directory: a run tried again (run/confirm.py) writes its files afresh, and none of the
        first try's may stay behind."""
        for p in self.staging.iterdir():
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()

    def commit(self) -> None:
        """Swap the complete staging directory in for --out (see the module docstring); release the lock."""
        try:
            self._commit()
        finally:
            self.lock.unlink(missing_ok=True)

    def _commit(self) -> None:
        if not self.out.exists():
            self._rename_in()
            return
        ckpt = self.out / CKPT_DIR
        if ckpt.is_dir():  # the checkpoints of this run: the runner removes them after, unless kept
            os.replace(ckpt, self.staging / CKPT_DIR)
        if not any(self.out.iterdir()) or not self.force:  # empty: renamed over atomically, no old directory
            try:
                self._rename_in()
            except BaseException:
                self._put_back_checkpoints()
                raise
            return
        try:
            os.replace(self.out, self.old)
        except OSError as exc:
            self._put_back_checkpoints()
            raise OutputError(f"--out {self.out}: cannot move the old directory aside ({exc.strerror})") from exc
        try:
            os.replace(self.staging, self.out)
        except BaseException as exc:
            os.replace(self.old, self.out)
            self._put_back_checkpoints()
            if isinstance(exc, OSError):
                raise OutputError(f"--out {self.out}: cannot move the new directory in ({exc.strerror})") from exc
            raise
        shutil.rmtree(self.old, ignore_errors=True)

    def _rename_in(self) -> None:
        """rename(staging -> out): onto an absent or empty directory only, never over files."""
        try:
            os.rename(self.staging, self.out)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise OutputError(f"--out {self.out} was filled by something else while this run worked; it is "
                                  "left as it is (pass --force to replace it)") from exc
            raise OutputError(f"--out {self.out}: cannot move the new directory in ({exc.strerror})") from exc

    def _put_back_checkpoints(self) -> None:
        if (self.staging / CKPT_DIR).is_dir() and not (self.out / CKPT_DIR).exists():
            os.replace(self.staging / CKPT_DIR, self.out / CKPT_DIR)

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        self.lock.unlink(missing_ok=True)
