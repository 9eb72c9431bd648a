"""torch's tracing and exporting without its console output: warnings, log lines and the graph dumps it prints for
a data-dependent branch. Every failure still raises, and the caller reports it in one line; what torch would have
printed is not the user's business while a trace is only being tried (a model that cannot be traced falls back)."""
from __future__ import annotations

import contextlib
import io
import logging
import warnings


@contextlib.contextmanager
def quiet_torch():
    """Warnings ignored, logging below ERROR off, stdout and stderr written to a buffer, for the block's duration."""
    disabled = logging.root.manager.disable
    logging.disable(max(disabled, logging.WARNING))
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(disabled)
