"""Latency of ONNX Runtime sessions on a batch of the run's data: one graph's median (the report's figures, with
the p10-p90 spread of its timed runs), or several graphs timed in turns (quantize's latency objective).

Why in turns: on a shared machine the load changes over seconds, so timing one graph and then another compares the
load as much as the graphs; alternating one run of each, round after round, gives every graph the same conditions.
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from compressor.io.data import Dataset

LATENCY_BATCH = 64
LATENCY_SECONDS = 5.0  # a large model's timed runs stop after this much (at least one; small models do all)
SLOWER_MARGIN = 1.1    # a median more than this times another's is slower, not timing noise
MIN_SECONDS = 0.2      # a fast graph runs more rounds (up to 10x `repeats`) until each has been timed this long


def latency_batch(data: Dataset, batch: int = LATENCY_BATCH) -> Dataset:
    idx = torch.arange(batch) % len(data)
    return data.subset(idx)


def feed_for(session, batch: Dataset) -> dict[str, np.ndarray]:
    """`batch` as the session's inputs (by name, else in order)."""
    names = [i.name for i in session.get_inputs()]
    if set(names) == set(batch.inputs):
        return {n: batch.inputs[n].numpy() for n in names}
    return dict(zip(names, (v.numpy() for v in batch.inputs.values())))


def ort_latency_ms(session, data: Dataset, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of one batch-64 run in ONNX Runtime: `repeats` runs after `warmup`, fewer where the runs
    are slow (one warm-up when a run takes more than LATENCY_SECONDS / repeats; the timed runs stop once they have
    taken LATENCY_SECONDS), so a 100M-parameter model is not run 23 times to time it."""
    return latencies_ms([session], data, repeats, warmup)[0]


def ort_latency_spread_ms(session, data: Dataset) -> tuple[float, list[float]]:
    """`ort_latency_ms` and the [p10, p90] of the same timed runs: how far one run's timings scatter, so that a
    comparison of two runs (`compress diff`) can tell a change from timing noise."""
    return spread_of([r[0] for r in timed_rounds_ms([session], data)])


def spread_of(runs: list[float]) -> tuple[float, list[float]]:
    """(median, [p10, p90]) of one graph's timed runs, in ms."""
    return round(statistics.median(runs), 4), [round(percentile(runs, 10), 4), round(percentile(runs, 90), 4)]


def same_batch_shapes(a: Dataset | None, b: Dataset) -> bool:
    """Whether the latency batches of `a` and `b` feed a graph tensors of the same names, shapes and dtypes: then a
    dense graph's time on one is its time on the other (the values do not change the work)."""
    if a is None or set(a.inputs) != set(b.inputs):
        return False
    x, y = latency_batch(a).inputs, latency_batch(b).inputs
    return all(x[k].shape == y[k].shape and x[k].dtype == y[k].dtype for k in x)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile by linear interpolation between ranks; defined for a single value (a slow model may
    be timed once), where statistics.quantiles is not."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def latencies_ms(sessions: list, data: Dataset, repeats: int = 20, warmup: int = 3) -> list[float]:
    """Median batch-64 wall time of each session, timed in turns (one run of each per round; module docstring),
    with the same early stops as `ort_latency_ms` applied to a round."""
    return medians_of(timed_rounds_ms(sessions, data, repeats, warmup))


def medians_of(rounds: list[list[float]]) -> list[float]:
    """Each session's median over the rounds of `timed_rounds_ms`."""
    return [round(statistics.median(r[i] for r in rounds), 4) for i in range(len(rounds[0]))]


def timed_rounds_ms(sessions: list, data: Dataset, repeats: int = 20, warmup: int = 3) -> list[list[float]]:
    """The timed rounds behind `latencies_ms`: per round, one batch-64 wall time (ms) of each session."""
    batch = latency_batch(data)
    feeds = [feed_for(s, batch) for s in sessions]

    def one_round() -> list[float]:
        out = []
        for session, feed in zip(sessions, feeds):
            t0 = time.perf_counter()
            session.run(None, feed)
            out.append((time.perf_counter() - t0) * 1000.0)
        return out

    for _ in range(warmup):
        if sum(one_round()) > LATENCY_SECONDS * 1000.0 / repeats:
            break
    rounds = []
    for _ in range(10 * repeats):
        rounds.append(one_round())
        spent = sum(map(sum, rounds))
        if spent > LATENCY_SECONDS * 1000.0 * len(sessions):
            break
        if len(rounds) >= repeats and spent >= MIN_SECONDS * 1000.0 * len(sessions):
            break
    release_arenas(sessions, data)
    return rounds


def release_arenas(sessions: list, data: Dataset) -> None:
    """Run each session once more on one sample, untimed, with ORT's arena shrinkage: the memory its arena grew to
    for the timed batches is given back (a shared arena, `calls.ort_session`, would keep it for the process's life).
    A graph that cannot take one sample keeps its arena until the session is freed."""
    import onnxruntime as ort

    shrink = ort.RunOptions()
    shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    one = latency_batch(data, 1)
    for session in sessions:
        try:
            session.run(None, feed_for(session, one), shrink)
        except Exception:  # noqa: BLE001 - a fixed batch dimension: nothing to release early
            pass
