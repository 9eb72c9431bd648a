"""Option values checked before any work: a value outside its range is a usage error (exit 2), never a whole
pipeline run that ends in a failed gate (exit 3) or an overflow deep in torch (`torch.manual_seed` takes a
64-bit seed; each stage seeds itself from seed * 1000 + stage index, so the seed is kept to 32 bits).
"""
from __future__ import annotations

import math

from compressor.core.precision import precision_error
from compressor.errors import UsageError

SEED_MAX = 2 ** 32 - 1
# metric -> (low, high) of a meaningful floor; a plugin metric's floor need only be finite
FLOOR_RANGES = {"accuracy": (0.0, 100.0), "agreement": (0.0, 100.0), "cosine_min": (-1.0, 1.0),
                "cosine_mean": (-1.0, 1.0)}


def _number(value, flag: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"{flag} {value!r}: expected a finite number")
    return float(value)


def check_ranges(options) -> None:
    """Raise UsageError naming the flag of the first value outside its range (RunOptions fields)."""
    seed = options.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise UsageError(f"--seed {seed!r}: expected an integer from 0 to {SEED_MAX}")
    if not 0.0 <= _number(options.max_drop, "--max-drop") <= 100.0:
        raise UsageError(f"--max-drop {options.max_drop}: expected points from 0 to 100")
    if not 0.5 <= _number(options.confidence, "--confidence") < 1.0:
        raise UsageError(f"--confidence {options.confidence}: expected a probability from 0.5 to below 1 (e.g. 0.9)")
    if options.min_recovery is not None and not 0.0 < _number(options.min_recovery, "--min-recovery") <= 1.0:
        raise UsageError(f"--min-recovery {options.min_recovery}: expected a ratio in (0, 1] (e.g. 0.99)")
    if options.max_bytes is not None and (isinstance(options.max_bytes, bool) or not isinstance(options.max_bytes, int)
                                          or options.max_bytes < 1):
        raise UsageError(f"--max-bytes {options.max_bytes!r}: expected a whole number of bytes, at least 1")
    if isinstance(options.threads, bool) or not isinstance(options.threads, int) or options.threads < 1:
        raise UsageError(f"--threads {options.threads!r}: expected a whole number, at least 1")
    if (problem := precision_error(options.precision, options.device)) is not None:
        raise UsageError(f"--precision: {problem}")
    for name, value in options.floors.items():
        low, high = FLOOR_RANGES.get(name, (-math.inf, math.inf))
        if not low <= _number(value, f"--floor {name}=") <= high:
            raise UsageError(f"--floor {name}={value}: expected a value from {low:g} to {high:g}")


DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value, flag: str) -> float | None:
    """Seconds from `90`, `90s`, `30m`, `1.5h` (None stays None); a usage error naming `flag` otherwise."""
    if value is None:
        return None
    text = str(value).strip().lower()
    unit = DURATION_UNITS.get(text[-1:], None) if text else None
    try:
        seconds = float(text[:-1] if unit else text) * (unit or 1.0)
    except ValueError:
        seconds = math.nan
    if isinstance(value, bool) or not math.isfinite(seconds) or seconds <= 0:
        raise UsageError(f"{flag} {value!r}: expected a positive duration: seconds, or a number with s, m or h "
                         "(e.g. 30m)")
    return seconds
