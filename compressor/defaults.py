"""Values several layers share and the command line must know before anything heavy is imported (its help is built
from them, and `compress --help` should not wait for torch): the budget rule's default confidence, the final
confirmation's smallest slice, and the precisions a fine-tune may run in, with the device each needs."""
from __future__ import annotations

DEFAULT_CONFIDENCE = 0.75  # of the one-sided upper bound every stage decision uses (judge/budget.py)
CONFIRM_MIN = 200  # validation samples the final confirmation needs before its slice is held back (run/confirm.py)
PRECISIONS = ("fp32", "bf16", "fp16")


def precision_error(name: str, device: str) -> str | None:
    """Why `name` cannot run on `device` (None when it can): fp16 needs CUDA's loss scaling (core/precision.py)."""
    if name not in PRECISIONS:
        return f"precision must be one of {', '.join(PRECISIONS)}, not {name!r}"
    if name == "fp16" and str(device).split(":")[0] != "cuda":
        return "precision fp16 needs a CUDA device (--device cuda): on a CPU use bf16"
    return None
