"""Train the continuous-depth sample `digits_odenet` (seeded; run from the repository root).

    python -m sample_models.make_odenet

As ALGORITHMS.md §4 describes (Queiruga et al., Stateful ODE-Nets): the 16 residual blocks' weights are a
function of depth theta(t) = sum_a phi_a(t) theta_a in the piecewise-constant basis, evaluated by 16
forward-Euler steps (`compressor.algorithms.basis.stack.BasisStack`). Refinement training: K = 4 functions first, then
each function is split in two (the exact projection onto K = 8, i.e. duplication), trained again, then K = 16,
trained at 16. Trained on the train split only, a fixed number of epochs per phase (val is never looked at). The model is then written in its discrete form
(block k = theta_k), with each block's batch-norm statistics re-estimated on the train split (train-mode pass,
cumulative average), as a state_dict (`digits_odenet.pt`) and a `torch.export` program (`digits_odenet.pt2`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compressor.algorithms.basis.functions import Basis, projection_matrix
from compressor.algorithms.basis.stack import block_layout, block_row
from compressor.algorithms.basis.stage import install_stack
from sample_models.make_samples import HERE, SEED, accuracy, save
from sample_models.odenet import DEPTH, DigitsODENet

SCHEDULE = ((4, 25, 2e-3), (8, 15, 1e-3), (16, 10, 5e-4))  # (K, epochs, learning rate)


def load_splits(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for name in ("train", "val", "heldout"):
        with np.load(root / f"digits_{name}.npz") as f:
            out[name] = (f["x"], f["y"])
    return out


def continuous(model: DigitsODENet, coef: torch.Tensor, k: int) -> nn.Module:
    """The model with its blocks replaced by K piecewise-constant coefficient sets (16 Euler steps)."""
    names = [str(i) for i in range(DEPTH)]
    install_stack(model, "blocks", names, Basis("piecewise_constant", k), DEPTH, coef.clone())
    return model


def discrete(cont: nn.Module, coef: torch.Tensor, k: int) -> DigitsODENet:
    """Write theta(t) at the 16 steps into a plain stack of 16 blocks (the other weights copied)."""
    model = DigitsODENet()
    layout, _ = block_layout(model.blocks[0])
    steps = torch.from_numpy(Basis("piecewise_constant", k).steps(DEPTH)).float() @ coef
    state = {n: v for n, v in cont.state_dict().items() if not n.startswith("blocks.")}
    for j in range(DEPTH):
        start = 0
        for name, shape, _ in layout:
            size = int(torch.Size(shape).numel())
            state[f"blocks.{j}.{name}"] = steps[j, start:start + size].reshape(shape).clone()
            start += size
        state[f"blocks.{j}.bn1.num_batches_tracked"] = torch.tensor(0)
    model.load_state_dict(state)
    return model


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: np.ndarray) -> None:
    """Re-estimate every batch-norm's running statistics on the training inputs (cumulative average)."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for chunk in torch.from_numpy(x).split(128):
        model(chunk)
    for m in bns:
        m.momentum = 0.1
    model.eval()


def fit(model: nn.Module, k: int, epochs: int, lr: float, splits, seed: int) -> float:
    """Adam + cosine on the train split for `epochs` (the last epoch is kept: val stays fresh for the
    compression runs). Returns the discrete model's (batch norm re-estimated) train accuracy."""
    torch.manual_seed(seed)
    x, y = (torch.from_numpy(a) for a in splits["train"])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        sched.step()
    return accuracy(to_discrete(model, k, splits), *splits["train"])


def to_discrete(model: nn.Module, k: int, splits) -> DigitsODENet:
    final = discrete(model, model.blocks[0].coef.detach(), k)
    recalibrate_bn(final, splits["train"][0])
    return final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(SEED)
    splits = load_splits(HERE)
    base = DigitsODENet()
    with torch.no_grad():
        for blk in base.blocks:  # small residuals at the start: h + R(h) with R ~ 0
            blk.conv2.weight.mul_(0.1)
    layout, _ = block_layout(base.blocks[0])
    coef = torch.stack([block_row(b, layout) for b in base.blocks])
    carried = {n: v for n, v in base.state_dict().items() if not n.startswith("blocks.")}
    k_prev = DEPTH
    for k, epochs, lr in SCHEDULE:
        # refinement: the exact L2 projection between nested piecewise-constant spaces (4 -> 8 duplicates)
        p = torch.from_numpy(projection_matrix(Basis("piecewise_constant", k_prev), Basis("piecewise_constant", k)))
        coef = p.float() @ coef
        model = continuous(DigitsODENet(), coef, k)
        model.load_state_dict(carried, strict=False)
        train_acc = fit(model, k, epochs, lr, splits, SEED + k)
        coef = model.blocks[0].coef.detach().clone()
        carried = {n: v for n, v in model.state_dict().items() if not n.startswith("blocks.")}
        print(f"K={k}: {epochs} epochs at lr {lr}, train {train_acc:.4f}")
        k_prev = k
    final = to_discrete(model, k_prev, splits)
    params = sum(p.numel() for p in final.parameters())
    print(f"digits_odenet: {params} params, val {accuracy(final, *splits['val']):.4f}, "
          f"held-out accuracy {accuracy(final, *splits['heldout']):.4f}")
    save(final, "digits_odenet", args.out)


if __name__ == "__main__":
    main()
