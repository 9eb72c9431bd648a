"""Make the sample data splits and train the sample models (seeded; run from the repository root).

    python -m sample_models.make_samples

Data: scikit-learn's bundled digits (1797 8x8 images), scaled to [0, 1], split stratified with a fixed seed
into held-out (20%, 360 images), then the rest into train (987) and val (450). Models are trained on the train
split only for a fixed number of epochs (the last epoch is kept): val is never looked at while the originals are
made, so it is as fresh to them as held-out, and 450 samples let the budget rule admit a lost sample or two.
Each model is saved as a ``torch.export`` program (``.pt2``, dynamic batch) and as a state_dict (``.pt``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sample_models import digits_models

HERE = Path(__file__).resolve().parent
SEED = 0
VAL_SIZE = 450


def make_splits(out: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, train_size=0.7, stratify=y, random_state=SEED)
    x_val, x_held, y_val, y_held = train_test_split(
        x_rest, y_rest, train_size=1 / 3, stratify=y_rest, random_state=SEED
    )
    # held-out stays the same 360 images; train and val are re-drawn from the rest so val has VAL_SIZE samples
    pool_x, pool_y = np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val])
    x_train, x_val, y_train, y_val = train_test_split(
        pool_x, pool_y, test_size=VAL_SIZE, stratify=pool_y, random_state=SEED
    )
    splits = {"train": (x_train, y_train), "val": (x_val, y_val), "heldout": (x_held, y_held)}
    for name, (xs, ys) in splits.items():
        np.savez_compressed(out / f"digits_{name}.npz", x=xs, y=ys)
    return splits


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def train(model: nn.Module, splits, epochs: int, lr: float = 1e-3, seed: int = SEED) -> nn.Module:
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
    return model.eval()


def save(model: nn.Module, name: str, out: Path) -> None:
    torch.save(model.state_dict(), out / f"{name}.pt")
    batch = torch.export.Dim("batch", min=1, max=65536)
    ep = torch.export.export(model, (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: batch},))
    torch.export.save(ep, out / f"{name}.pt2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    torch.set_num_threads(2)
    splits = make_splits(args.out)
    recipes = {"digits_mlp": (digits_models.mlp, 30), "digits_cnn": (digits_models.cnn, 20),
               "digits_resnet": (digits_models.resnet, 20)}
    for name, (factory, epochs) in recipes.items():
        torch.manual_seed(SEED)
        model = train(factory(), splits, epochs)
        params = sum(p.numel() for p in model.parameters())
        print(f"{name}: {params} params, val accuracy {accuracy(model, *splits['val']):.4f}, "
              f"held-out accuracy {accuracy(model, *splits['heldout']):.4f}")
        save(model, name, args.out)


if __name__ == "__main__":
    main()
