"""`compress ... --nproc N`: the same command relaunched as N data-parallel processes on this machine by torch's own
elastic launcher (what `torchrun --standalone --nproc-per-node N -m compressor ...` does), with rank 0's exit code
as the command's. Several machines are torchrun's own rendezvous (docs/usage.md), not this shortcut.
"""
from __future__ import annotations

import os
import sys
import uuid


def without_option(argv: list[str], name: str) -> list[str]:
    """`argv` without `name VALUE` / `name=VALUE`."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(f"{name}="):
            out.append(arg)
    return out


def launch(nproc: int, argv: list[str]) -> int:
    """Run `python -m compressor run ARGV` in `nproc` processes (one rendezvous on localhost) and wait; returns the
    exit code of rank 0 (3 when its gate failed), or of the first rank that failed."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if sys.platform.startswith("linux"):  # one machine: gloo talks over loopback, whatever the hostname resolves to
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    try:
        elastic_launch(config, sys.executable)("-m", "compressor", "run", *argv)
    except ChildFailedError as exc:
        failure = exc.failures.get(0) or exc.get_first_failure()[1]
        return failure.exitcode if failure.exitcode > 0 else 1
    except SignalException as exc:  # Ctrl-C or SIGTERM reached the launcher: the shell's code for that signal
        return 128 + int(exc.sigval)
    return 0
