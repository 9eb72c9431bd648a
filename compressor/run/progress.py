"""Progress inside long stages: a rich bar (step, status such as loss and metric, elapsed, ETA) on a terminal,
one plain line per step when stderr is not a terminal (CI logs, pipes), nothing under --quiet; --verbose keeps the
plain lines on a terminal too, above the bar, so every step's numbers stay on screen."""
from __future__ import annotations

import contextlib
import time
from typing import Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from compressor.errors import check_stop


class Reporter:
    """Hands out progress tasks and prints status lines unless quiet (`verbose`: every step's line, bar or not)."""

    def __init__(self, console: Console | None = None, quiet: bool = False, verbose: bool = False) -> None:
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self.verbose = verbose and not quiet

    def log(self, message: str) -> None:
        check_stop()
        if not self.quiet:
            self.console.print(message, highlight=False, soft_wrap=True)

    @contextlib.contextmanager
    def task(self, description: str, total: int | None) -> Iterator["_Task"]:
        if self.quiet:
            yield _Task(None, None, None, description, total)
            return
        if not self.console.is_terminal:
            yield _Task(None, None, self, description, total)
            return
        progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("ETA"),
                            TimeRemainingColumn(), console=self.console, transient=True)
        with progress:
            tid = progress.add_task(description, total=total, status="")
            yield _Task(progress, tid, self, description, total)


PLAIN_EVERY_S = 10.0  # without a terminal, batch-level advances print at most this often


class _Task:
    """One long loop. With a rich bar it updates the bar; with only a reporter (not a terminal) it prints one
    plain line per step (`desc: step 3/40 loss 0.0123 | 12s, ETA 148s`): every status (epoch end, prune step)
    and every step of a loop without a known total, batch steps at most every PLAIN_EVERY_S seconds so a CI log
    stays readable; with neither (quiet) it does nothing."""

    def __init__(self, progress: Progress | None, tid, reporter: Reporter | None, description: str,
                 total: int | None) -> None:
        self.progress, self.tid, self.reporter, self.description = progress, tid, reporter, description
        self.total, self.done, self.start = total, 0, time.perf_counter()
        self.last = self.start

    def _line(self, status: str, force: bool = True) -> None:
        if self.reporter is None or (self.progress is not None and not self.reporter.verbose):
            return
        now = time.perf_counter()
        if not force and now - self.last < PLAIN_EVERY_S:
            return
        self.last = now
        elapsed = now - self.start
        of = f"/{self.total}" if self.total else ""
        eta = ""
        if self.total and self.done:
            eta = f", ETA {elapsed / self.done * max(self.total - self.done, 0):.0f}s"
        self.reporter.log(f"{self.description}: step {self.done}{of} {status} | {elapsed:.0f}s{eta}")

    def advance(self, n: int = 1, status: str = "", line: bool = False) -> None:
        """`line`: this step always gets its plain line (a search's step, not a batch)."""
        check_stop()  # a signal whose exception was lost still stops the run here
        self.done += n
        if self.progress is not None:
            self.progress.update(self.tid, advance=n, status=status)
        self._line(status, force=line or self.total is None)

    def status(self, status: str) -> None:
        check_stop()
        if self.progress is not None:
            self.progress.update(self.tid, status=status)
        self._line(status)
