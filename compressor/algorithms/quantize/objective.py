"""quantize's objective: which of auto's checked forms to ship, by speed as well as size, on the CPU that runs it.

Why: an int8 graph is smaller but not always faster. ONNX Runtime's QDQ graph adds quantize/dequantize work around
every op, which a small conv net's fp32 kernels (AVX-512, AMX) outrun; 4-bit MatMulNBits weights are dequantized to
float32 on every call; dynamic int8 can win on transformers where static int8 loses. What is faster depends on the
CPU and the model, so it is measured, never assumed: auto's choice and the float graph are timed in turns on a
batch of the check set (runtime/timing.py), and when the choice is slower by more than the timing margin, the all-dynamic
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
from compressor.io.load import file_sha256
from compressor.io.onnx_files import copy_onnx, external_data_path
from compressor.runtime.calls import ort_session
from compressor.runtime.timing import LATENCY_BATCH, SLOWER_MARGIN, medians_of, spread_of, timed_rounds_ms

Check = Callable[[Path], tuple[bool, str]]


def _times(paths: dict[str, Path], data: Dataset, timed: dict | None) -> dict[str, float]:
    """Each graph's median ms, timed in turns. `timed` receives each graph's (median, [p10, p90]): under "float"
    the float graph's, and under "by_sha256" every timed graph's by its file's digest (the shipped graph's time is
    then found by what was written, whichever form the objective or the run's metric left in place)."""
    rounds = timed_rounds_ms([ort_session(p, shared_arena=True) for p in paths.values()], data)
    if timed is not None:
        timed["float"] = spread_of([r[0] for r in rounds])  # "float" is always timed first
        for i, path in enumerate(paths.values()):
            if not external_data_path(path).exists():  # a digest of the graph alone would not cover its weights
                timed.setdefault("by_sha256", {})[file_sha256(path)] = spread_of([r[i] for r in rounds])
    return dict(zip(paths, medians_of(rounds)))


def _listing(times: dict[str, float]) -> str:
    return ", ".join(f"{name} {ms:.3f} ms" for name, ms in times.items())


def pick_by_speed(objective: str, float_graph: Path, dst: Path, tmp: Path, check: Dataset, passes: Check | None,
                  all_dynamic: Callable[[Path], bool] | None, timed: dict | None = None) -> list[str]:
    """`dst` holds auto's checked int8 choice for `float_graph` (the fp32 export quantize was given); leave in `dst`
    the form the objective (balanced or latency) picks, returns the notes. `all_dynamic(path)` writes the
    all-dynamic form (False when there is no node to make dynamic); None: no alternative to try. A failure to time
    keeps the int8 choice, with a note. `timed` receives the float graph's timing (`_times`), which the run's fp32
    baseline then reuses instead of timing the same graph again."""
    if not quantized(dst):
        return []  # auto kept every node float: nothing to weigh
    where = f"ONNX Runtime, batch {LATENCY_BATCH} of {check.source}, timed in turns on this CPU"
    try:
        times = _times({"float": float_graph, "int8 choice": dst}, check, timed)
        if objective == "balanced" and times["int8 choice"] <= SLOWER_MARGIN * times["float"]:
            return [f"objective balanced: the int8 choice runs within {SLOWER_MARGIN}x of the float graph "
                    f"({_listing(times)}; {where})"]
        paths, dynamic_note = {"float": float_graph, "int8 choice": dst}, ""
        alt = tmp / "all-dynamic.onnx"
        if all_dynamic is not None and passes is not None and all_dynamic(alt):
            held, how = passes(alt)
            paths.update({"all dynamic": alt} if held else {})
            dynamic_note = "" if held else f"; the all-dynamic form failed the check ({how})"
            times = _times(paths, check, timed)
    except Exception as exc:  # ONNX Runtime could not time a graph or make the alternative: the checked choice stands
        return [f"objective {objective}: the int8 choice is kept (timing it, or making the all-dynamic form to "
                f"weigh against it, failed: {type(exc).__name__})"]
    if objective == "latency":
        best = min(times, key=times.get)
    else:
        fast = [n for n in ("int8 choice", "all dynamic") if n in times and times[n] <= SLOWER_MARGIN * times["float"]]
        best = min(fast, key=lambda n: paths[n].stat().st_size) if fast else "float"
    if best == "float":
        copy_onnx(float_graph, dst)  # with its external data, if the export has one
    elif best != "int8 choice":
        shutil.copyfile(paths[best], dst)
    verdict = {"float": f"every checked int8 form runs more than {SLOWER_MARGIN}x slower than the float graph here, "
                        "so the float graph is shipped (auto's notes describe the int8 choice timed, not "
                        "shipped; quantize.objective=size ships the smallest checked form whatever its speed)",
               "int8 choice": "the int8 choice is kept",
               "all dynamic": "the all-dynamic int8 form is shipped: within the margin and smaller than the "
                              "other forms that are"}[best]
    if objective == "latency":
        verdict = f"the fastest is shipped: {best}" + (" (auto's notes describe the int8 choice timed, "
                                                         "not shipped)" if best == "float" else "")
    return [f"objective {objective}: {verdict} ({_listing(times)}; {where}{dynamic_note})"]


INT8_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
            "QLinearConv", "QLinearMatMul", "MatMulNBits", "DynamicQuantizeMatMul", "QGemm"}


STATIC_OPS = {"QuantizeLinear", "QLinearConv", "QLinearMatMul", "QGemm"}
DYNAMIC_OPS = {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul"}


def graph_form(path: Path) -> str:
    """The quantized form of the graph at `path`, read from its ops: "static" (activations quantized with fixed
    scales), "dynamic" (scales from each batch), "mixed" (both), "4bit" (MatMulNBits weights), "weight_only"
    (int8 weights dequantized, float activations), or "float"."""
    ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    static, dynamic = bool(ops & STATIC_OPS), bool(ops & DYNAMIC_OPS)
    if static and dynamic:
        return "mixed"
    if static or dynamic:
        return "static" if static else "dynamic"
    if "MatMulNBits" in ops:
        return "4bit"
    return "weight_only" if "DequantizeLinear" in ops else "float"


def quantized(path: Path) -> bool:
    """Whether the graph at `path` has any int8 (or 4-bit) op."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return any(n.op_type in INT8_OPS for n in graph.node)


def all_dynamic_writer(work: Path, forms, exclude: list[str]) -> Callable[[Path], bool]:
    """A writer of every weighted node dynamic int8 and the embedding tables int8 weight-only (auto's forms); it
    writes nothing and returns False when no node is left to quantize (all excluded, or none)."""
    def write(path: Path) -> bool:
        model = onnx.load(str(work), load_external_data=False)  # names only
        names = [n.name for n in weighted_nodes(model) if n.name not in exclude]
        tables = [t for t in gather_tables(model) if t not in exclude]
        del model
        if not names and not tables:
            return False
        forms.mixed(path, [], names, [], tables)
        return True
    return write


def shipped_form(notes: list[str]) -> str | None:
    """The form shipped and why: the objective's timed verdict, else auto's choice, else the first note."""
    for wanted in (lambda n: n.startswith("objective ") and " ms" in n, lambda n: n.startswith("auto: "),
                   lambda n: True):
        found = next((n for n in notes if wanted(n)), None)
        if found is not None:
            return found
    return None
