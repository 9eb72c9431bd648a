"""auto's check: does a quantized graph keep the check set's outputs within bounds of the float graph's?

Outputs of 2 or more values a sample are judged by their per-sample cosine to the float outputs (min and mean);
narrower outputs (regression, [N, 1]) by the relative error `output_error` within the cosine bounds' equivalent
(`error_bounds`). A graph ONNX Runtime cannot run fails the check, saying why, so auto moves on to its next form.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import onnx
import torch

from compressor.errors import CompressorError, first_line
from compressor.io.data import Dataset
from compressor.io.onnx_files import run_time_quantized
from compressor.runtime.calls import onnx_predict, ort_session

CHECK_CHUNK = 32  # check-set samples run per ONNX Runtime call: a failing candidate stops as soon as it is decided


def output_cosine(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(min, mean) per-sample cosine of the outputs to the float graph's; a 1-wide output is compared as one column
    (auto's check judges such outputs by `output_error` instead)."""
    out, ref = out.reshape(out.shape[0], -1), ref.reshape(ref.shape[0], -1)
    if out.shape[1] == 1:
        out, ref = out.T, ref.T
    cos = torch.nn.functional.cosine_similarity(out.double(), ref.double(), dim=1, eps=1e-12)
    return float(cos.min()), float(cos.mean())


def output_error(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(mean squared error / variance, max |error| / standard deviation) of the outputs to the float graph's `ref`
    over every value of the check set: the scale-aware error of an output with one value a sample, where a per-sample
    cosine is only a sign and the cosine of the whole column is dominated by its mean (an offset of 4 hides an error
    that doubles the error to the true targets). Variance and deviation are the float outputs', centred, so an offset
    hides nothing; a constant output falls back to its mean square, a zero one to 1."""
    err, ref = (out.double() - ref.double()).reshape(-1), ref.double().reshape(-1)
    var = float(ref.var(unbiased=False)) if ref.numel() > 1 else 0.0
    scale = var if var > 0 else (float(ref.square().mean()) or 1.0)
    return float(err.square().mean()) / scale, float(err.abs().max()) / scale ** 0.5


def error_bounds(bounds: tuple[float, float]) -> tuple[float, float]:
    """The cosine bounds (min, mean) in the units of `output_error`, as strict as they are. For unit vectors
    ||a - b||^2 = 2 (1 - cos a.b): mean cosine 0.995 is a mean squared error of 2 (1 - 0.995) = 0.01 of the squared
    norm, and min cosine 0.985 bounds the worst sample's at 2 (1 - 0.985) = 0.03. A centred scalar output's squared
    norm is its variance, so: mse / variance <= 2 (1 - mean) = 0.01 (RMS error within 10% of the spread), and
    max |error| / std <= sqrt(2 (1 - min)) = 0.173. The worst case is what catches a calibrated range clipping the
    largest outputs; it is measured against the deviation, not the range, since the range grows with the tail it
    would have to expose (a clipped 5.40 -> 4.58 on validation is 0.084 of the range there, but 0.49 std)."""
    lo_min, lo_mean = bounds
    return 2 * (1 - lo_mean), (2 * max(1 - lo_min, 0.0)) ** 0.5


class OutputCheck:
    """`passes(path)`: does the graph at `path` keep the check set's output within bounds of the float graph `work`?
    With the measured values, for the notes; `on_check` hears each result (progress). Outputs of 2 or more values a
    sample: the cosine bounds (min, mean) of the per-sample cosine; narrower outputs (one value a sample,
    regression): `output_error` within `error_bounds(bounds)`. `bounds` is the note naming the check's bounds.
    `reference`: the float model's outputs on `check` where the run has them already (the original's, when no
    stage changed it), instead of one more float pass over `check` in ONNX Runtime."""

    def __init__(self, work: Path, check: Dataset, bounds: tuple[float, float],
                 on_check: Callable[[str], None] | None = None, reference: torch.Tensor | None = None) -> None:
        self.ref = reference if reference is not None else onnx_predict(ort_session(work), check)
        self.check, self.on_check, self.cosine = check, on_check, bounds
        self.narrow = self.ref[0].numel() < 2 if len(self.ref) else False
        self.limits = error_bounds(bounds)
        self.bounds = f"bounds {bounds[0]} / {bounds[1]}" if not self.narrow else (
            f"relative error bounds: mse / variance <= {self.limits[0]:.4g}, max |error| / std <= "
            f"{self.limits[1]:.4g}, the cosine bounds {bounds[0]} / {bounds[1]} in squared-error units; "
            f"{self.ref[0].numel()} output value a sample, so no per-sample cosine")

    def __call__(self, path: Path) -> tuple[bool, str]:
        try:
            out = self._outputs(path)
        except Exception as exc:  # noqa: BLE001 - e.g. a weight shared by two ops, quantized along two axes
            if isinstance(exc, (MemoryError, CompressorError)):
                raise
            how = f"ONNX Runtime cannot run it ({first_line(exc)})"
            if self.on_check is not None:
                self.on_check(f"{how} (fails)")
            return False, how
        n = len(self.check)
        ref = self.ref[:len(out)]
        seen = "" if len(out) == n else f" on the first {len(out)} of {n} samples, failing whatever the rest give"
        if self.narrow:
            rel, worst = output_error(out, ref) if len(out) == n else self._narrow_so_far(out)
            ok = rel <= self.limits[0] and worst <= self.limits[1] and len(out) == n
            how = f"relative error to float mse / variance {rel:.4f} / max |error| / std {worst:.4f}{seen}"
        else:
            cmin, cmean = output_cosine(out, ref)
            ok, how = cmin >= self.cosine[0] and cmean >= self.cosine[1] and len(out) == n, \
                f"cosine to float min {cmin:.4f} / mean {cmean:.4f}{seen}"
        if self.on_check is not None:
            self.on_check(f"{how} ({'holds' if ok else 'fails'})")
        return ok, how

    def _outputs(self, path: Path) -> torch.Tensor:
        """The graph's outputs on the check set, stopped early once the rest of the set cannot make it pass."""
        session, n, outs = ort_session(path), len(self.check), []
        dynamic = run_time_quantized(onnx.load(str(path), load_external_data=False).graph)
        chunk = n if dynamic else CHECK_CHUNK  # a scale taken at run time spans the whole batch: run it whole
        for start in range(0, n, chunk):
            rows = torch.arange(start, min(start + chunk, n))
            outs.append(onnx_predict(session, self.check.subset(rows)))
            if len(rows) + start < n and self._fails_whatever_follows(torch.cat(outs), n):
                break
        return torch.cat(outs)

    def _fails_whatever_follows(self, out: torch.Tensor, n: int) -> bool:
        """Whether the outputs of the first samples already decide the check as failed: their minimum cosine is below
        the bound (a minimum only falls), or the mean cannot reach its bound even if every other sample scored a
        cosine of 1; for narrow outputs, the worst error or the squared errors so far already pass their bounds
        (both only grow). The same decision as the whole set's, sooner."""
        ref = self.ref[:len(out)]
        if self.narrow:
            rel, worst = self._narrow_so_far(out)
            return rel > self.limits[0] or worst > self.limits[1]
        o, r = out.reshape(len(out), -1).double(), ref.reshape(len(ref), -1).double()
        if o.shape[1] == 1:
            return False
        cos = torch.nn.functional.cosine_similarity(o, r, dim=1, eps=1e-12)
        return float(cos.min()) < self.cosine[0] or float(cos.sum()) + (n - len(out)) < self.cosine[1] * n

    def _narrow_so_far(self, out: torch.Tensor) -> tuple[float, float]:
        """`output_error` of the first samples' outputs on the whole set's scale and count: lower bounds of the
        whole set's (mse / variance, max |error| / std), which both only grow as samples come in."""
        err = (out.double() - self.ref[:len(out)].double()).reshape(-1)
        full = self.ref.double().reshape(-1)
        var = float(full.var(unbiased=False)) if full.numel() > 1 else 0.0
        scale = var if var > 0 else (float(full.square().mean()) or 1.0)
        return float(err.square().sum()) / (full.numel() * scale), float(err.abs().max()) / scale ** 0.5


def checker(work: Path, check: Dataset, bounds: tuple[float, float],
            on_check: Callable[[str], None] | None = None, reference: torch.Tensor | None = None) -> OutputCheck:
    """The check of auto's steps on `check` against the float graph `work` (OutputCheck)."""
    return OutputCheck(work, check, bounds, on_check, reference)
