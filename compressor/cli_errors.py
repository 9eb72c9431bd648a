"""How every failure of the `compress` command becomes one `error: ...` line and an exit code, never a traceback.

- A `CompressorError` prints its message; exit code its `exit_code` (1 error, 2 usage, 3 gate).
- The CLI framework's own errors (a bad option value: `--seed abc`, `--threads 0`, an unknown option, a missing
  argument) are usage errors: one line, exit 2, no help box.
- An OS error names its file when the system gives one; a `SystemExit(0)` escaping code the run called (a
  plugin calling `sys.exit()`) is an error, exit 1, never a silent success (`--arch` factories: `io/load.py`).
- Ctrl-C: "interrupted", exit 130; SIGTERM: exit 143 (the staging directory removed on the way out).
`--debug` (COMPRESSOR_DEBUG=1) adds the traceback behind the line.
"""
from __future__ import annotations

import functools
import os
import sys
import traceback

import typer
from rich.console import Console

from compressor.errors import CompressorError, Terminated

EXIT_USAGE = 2
err = Console(stderr=True)


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def _another_rank() -> bool:
    """A rank other than 0 of a data-parallel run (torchrun's environment): a command line every rank parses alike
    fails alike, so rank 0 alone says it (`--nproc` validates the plan once before it launches, run/command.py)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and os.environ.get("RANK", "0") != "0"


def _fail(exc: BaseException, message: str | None = None, code: int | None = None) -> None:
    code = getattr(exc, "exit_code", 1) if code is None else code
    if os.environ.get("COMPRESSOR_DEBUG"):  # --debug: the cause behind the one line (e.g. the exporter's error)
        traceback.print_exception(exc, file=sys.stderr)
    err.print(f"error: {one_line(message if message is not None else exc)}", highlight=False, soft_wrap=True,
              markup=False)  # a message may hold brackets: `pip install "compressor[hf]"`, a shape [N, C]
    raise typer.Exit(code)


def _os_error(exc: OSError) -> str:
    why = exc.strerror or str(exc) or type(exc).__name__
    names = [n for n in (exc.filename, exc.filename2) if n]
    return f"{': '.join(map(str, names))}: {why}" if names else f"{why} (the system named no file)"


def guard(fn):
    """Turn CompressorErrors, OS errors and anything unexpected into one line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except CompressorError as exc:
            _fail(exc)
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130)
        except Terminated:
            err.print("error: terminated (SIGTERM)")
            raise typer.Exit(143)
        except OSError as exc:
            _fail(exc, _os_error(exc), 1)
        except SystemExit as exc:
            if exc.code not in (0, None):  # already a failure (e.g. rich's exit on a closed stdout pipe)
                raise
            _fail(exc, f"code called by the run exited (SystemExit({exc.code!r})) before the run finished", 1)
        except Exception as exc:
            if os.environ.get("COMPRESSOR_DEBUG"):
                raise
            msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            _fail(exc, f"unexpected {type(exc).__name__}: {msg} (set COMPRESSOR_DEBUG=1 for a traceback)", 1)

    return wrapper


def framework_errors_as_one_line(main):
    """Wrap a click command's `main`: the framework's errors print one `error:` line (exit 2), not a help box."""

    @functools.wraps(main)
    def wrapper(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = main(self, args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as exc:  # click's ClickException and its UsageError family
            if type(exc).__name__ == "NoArgsIsHelpError":  # a bare `compress`: the help, as before
                exc.show()
            elif not _another_rank():
                err.print(f"error: {one_line(exc.format_message())}", highlight=False, soft_wrap=True, markup=False)
            code = getattr(exc, "exit_code", EXIT_USAGE) or EXIT_USAGE
        except typer.Abort:
            err.print("error: aborted", highlight=False)
            code = 1
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)

    return wrapper
