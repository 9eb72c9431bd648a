"""quantize's objective: which of auto's checked forms to ship, by speed as well as size, on the CPU that runs it.

Why: an int8 graph is smaller but not always faster. ONNX Runtime's QDQ graph adds quantize/dequantize work around
every op, which a small conv net's fp32 kernels (AVX-512, AMX) outrun; 4-bit MatMulNBits weights are dequantized to
float32 on every call; dynamic int8 can win on transformers where static int8 loses. What is faster depends on the
CPU and the model, so it is measured, never assumed: auto's choice and the float graph are timed in turns on a
batch of the check set (io/timing.py), and when the choice is slower by more than the timing margin, the all-dynamic
form is checked and timed as well.

- `size`: the smallest form that holds the check (4-bit MatMul weights with weight_bits=auto), whatever its speed.
- `balanced` (default): no 4-bit search; auto's int8 choice if it runs no slower than the float graph (within the
  margin), else the all-dynamic form if it holds the check and is no slower, else the float graph, with a note.
- `latency`: the fastest of the float graph, auto's int8 choice and the all-dynamic form (if it holds the check).
Every choice and the times it rests on are in the notes; a choice made by timing can differ between machines and
between loaded and idle runs, which `size` never does.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import onnx

from compressor.algorithms.quantize.auto import gather_tables, weighted_nodes
from compressor.io.data import Dataset
from compressor.io.onnx_export import ort_session
from compressor.io.timing import LATENCY_BATCH, SLOWER_MARGIN, latencies_ms

Check = Callable[[Path], tuple[bool, str]]


def _times(paths: dict[str, Path], data: Dataset) -> dict[str, float]:
    sessions = [ort_session(p) for p in paths.values()]
    return dict(zip(paths, latencies_ms(sessions, data)))


def _listing(times: dict[str, float]) -> str:
    return ", ".join(f"{name} {ms:.3f} ms" for name, ms in times.items())


def pick_by_speed(objective: str, work: Path, dst: Path, tmp: Path, check: Dataset, passes: Check,
                  all_dynamic: Callable[[Path], None]) -> list[str]:
    """`dst` holds auto's checked int8 choice for the float graph `work`; leave in `dst` the form the objective
    (balanced or latency) picks, returns the notes. `all_dynamic(path)` writes the all-dynamic form."""
    if not quantized(dst):
        return []  # auto kept every node float: nothing to weigh
    where = f"ONNX Runtime, batch {LATENCY_BATCH} of {check.source}, timed in turns on this CPU"
    times = _times({"float": work, "int8 choice": dst}, check)
    if objective == "balanced" and times["int8 choice"] <= SLOWER_MARGIN * times["float"]:
        return [f"objective balanced: the int8 choice runs no slower than the float graph ({_listing(times)}; "
                f"{where})"]
    alt = tmp / "all-dynamic.onnx"
    all_dynamic(alt)
    held, how = passes(alt)
    paths = {"float": work, "int8 choice": dst, **({"all dynamic": alt} if held else {})}
    times = _times(paths, check)
    dynamic_note = "" if held else f"; the all-dynamic form failed the check ({how})"
    if objective == "latency":
        best = min(times, key=times.get)
    else:
        fast = [n for n in ("int8 choice", "all dynamic") if n in times and times[n] <= SLOWER_MARGIN * times["float"]]
        best = min(fast, key=lambda n: paths[n].stat().st_size) if fast else "float"
    if best != "int8 choice":
        shutil.copyfile(paths[best], dst)
    verdict = {"float": "every checked int8 form runs slower here, so the float graph is kept (quantize.objective="
                        "size ships the smallest checked form whatever its speed)",
               "int8 choice": "the int8 choice is kept",
               "all dynamic": "the all-dynamic int8 form is shipped instead of the slower int8 choice"}[best]
    if objective == "latency" and best != "float":
        verdict = f"the fastest: {best}"
    return [f"objective {objective}: {verdict} ({_listing(times)}; {where}{dynamic_note})"]


INT8_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
            "QLinearConv", "QLinearMatMul", "MatMulNBits", "DynamicQuantizeMatMul", "QGemm"}


def quantized(path: Path) -> bool:
    """Whether the graph at `path` has any int8 (or 4-bit) op."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return any(n.op_type in INT8_OPS for n in graph.node)


def all_dynamic_writer(work: Path, forms, exclude: list[str]) -> Callable[[Path], None]:
    """Writes every weighted node dynamic int8 and the embedding tables int8 weight-only (auto's forms)."""
    model = onnx.load(str(work))
    names = [n.name for n in weighted_nodes(model) if n.name not in exclude]
    tables = [t for t in gather_tables(model) if t not in exclude]
    del model
    return lambda path: forms.mixed(path, [], names, [], tables)
