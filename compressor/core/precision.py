"""Mixed precision for every fine-tune (--precision): the forward pass runs under autocast, while the loss, the
weights, the optimizer state, the gradients and every evaluation stay float32.

Why: a fine-tune's time is its forward and backward passes, which bf16 (CPUs with AVX-512 BF16 or AMX, recent
GPUs) and fp16 (GPUs) run several times faster than float32 on hardware that has them. Keeping float32 master
weights and judging every decision in float32 is the standard recipe (Micikevicius et al., "Mixed Precision
Training", ICLR 2018): fp16's narrow exponent range needs a scaled loss so small gradients do not flush to zero
(torch.amp.GradScaler, which also skips a step whose gradients overflowed); bf16 has float32's exponent range and
needs none. A CPU without bf16 instructions (AVX2) emulates it and runs slower than float32: fp32 is the default.
"""
from __future__ import annotations

import contextlib

import torch

from compressor.defaults import precision_error
from compressor.errors import UsageError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class MixedPrecision:
    """One fine-tune's autocast and loss scaling: `with mp.autocast():` around the forward pass, then
    `mp.backward(loss)`, `mp.unscale(opt)` before anything reads the gradients, and `mp.step(opt)`."""

    def __init__(self, name: str, device: torch.device) -> None:
        if (problem := precision_error(name, str(device))) is not None:
            raise UsageError(problem)
        self.dtype = DTYPES.get(name)
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, opt: torch.optim.Optimizer) -> bool:
        """Unscale the gradients; whether they are finite (False: `step` will skip this step, and nothing else
        may act on them: a hook reading inf/nan would carry it into the weights)."""
        if self.scaler is None:
            return True
        self.scaler.unscale_(opt)
        return all(bool(torch.isfinite(p.grad).all()) for group in opt.param_groups for p in group["params"]
                   if p.grad is not None)

    def step(self, opt: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            opt.step()
        else:
            self.scaler.step(opt)  # skipped when the unscaled gradients hold inf/nan; the scale then shrinks
            self.scaler.update()
