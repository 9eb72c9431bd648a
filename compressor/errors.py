"""Errors that speak to the user: one line, what was wrong, and what would be right.

The CLI prints a `CompressorError` without a traceback and exits with its `exit_code`
(1: bad input or failed step, 2: usage, 3: gate failed; 130 interrupted by SIGINT, 143 terminated by SIGTERM).
"""
from __future__ import annotations


class CompressorError(Exception):
    """A problem the user can fix; its message is one line."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class UsageError(CompressorError):
    """A wrong command line: unknown stage or option, bad value, unsupported stage order."""

    exit_code = 2


class ModelLoadError(CompressorError):
    """The model file is missing, corrupt, of an unknown format, or needs an opt-in to load."""


class DataError(CompressorError):
    """A data file is missing, malformed, or does not fit the model."""


class OutputError(CompressorError):
    """The output directory cannot be written."""


class StageError(CompressorError):
    """A stage could not do its job on this model (says which stage and why)."""


class ArtifactError(CompressorError):
    """A saved artifact is missing, corrupt, or does not reproduce what was saved: the one exception type
    `compressor.load` raises for a malformed artifact; its message names the file."""


class Terminated(BaseException):
    """SIGTERM arrived: raised from the signal handler so the run unwinds (staging removed) like on Ctrl-C.
    A BaseException, as KeyboardInterrupt is, so no `except Exception` swallows it."""


_STOPS: list[type[BaseException]] = []  # signals that asked the run to stop, as the exception each raises


def request_stop(kind: type[BaseException]) -> None:
    """A signal handler's first act: remember that the run must stop, then raise `kind`. Python drops an exception
    raised while the interpreter runs a weakref callback (one of importlib's module locks, say), so the raise
    alone can be lost; `check_stop` raises it again at the next progress step."""
    _STOPS.append(kind)
    raise kind()


def check_stop() -> None:
    """Raise the stop a signal asked for, if one did (called at every progress step)."""
    if _STOPS:
        raise _STOPS[0]()


def first_line(exc: BaseException, limit: int = 200) -> str:
    """`Type: first line of the message` (at most `limit` characters of it), for a note or a one-line error."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:limit]}" if text else type(exc).__name__
