"""Progress bars (rich) for anything that takes more than a moment; silent under --quiet."""
from __future__ import annotations

import contextlib
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class Reporter:
    """Hands out progress tasks and prints status lines unless quiet."""

    def __init__(self, console: Console | None = None, quiet: bool = False) -> None:
        self.console = console or Console(stderr=True)
        self.quiet = quiet

    def log(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, highlight=False)

    @contextlib.contextmanager
    def task(self, description: str, total: int | None) -> Iterator["_Task"]:
        if self.quiet or not self.console.is_terminal:
            yield _Task(None, None, self, description)
            return
        progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=self.console,
                            transient=True)
        with progress:
            tid = progress.add_task(description, total=total, status="")
            yield _Task(progress, tid, self, description)


class _Task:
    def __init__(self, progress: Progress | None, tid, reporter: Reporter, description: str) -> None:
        self.progress, self.tid, self.reporter, self.description = progress, tid, reporter, description

    def advance(self, n: int = 1, status: str = "") -> None:
        if self.progress is not None:
            self.progress.update(self.tid, advance=n, status=status)

    def status(self, status: str) -> None:
        if self.progress is not None:
            self.progress.update(self.tid, status=status)
