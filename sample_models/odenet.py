"""A continuous-depth sample: a digits ODE-Net saved as a plain stack of 16 same-shaped residual blocks.

Queiruga et al., "Stateful ODE-Nets using Basis Function Expansions" (NeurIPS 2021), ALGORITHMS.md §4:
dh/dt = eps * R(theta(t), h) with forward Euler and eps = depth gives h_{k+1} = h_k + R(theta_k, h_k), which is
exactly a stack of residual blocks `h + R(h)`. `sample_models/make_odenet.py` trains theta(t) in a
piecewise-constant basis with refinement (K 4 -> 8 -> 16) and saves it in this discrete form, so that stack
detection finds `blocks.0..15`. Factory for ``--arch sample_models.odenet:odenet``.
"""
from __future__ import annotations

import torch
from torch import nn

WIDTH, DEPTH = 16, 16


class ODEBlock(nn.Module):
    """One forward-Euler step h + R(theta_k, h), R = conv3x3 -> BN -> ReLU -> conv3x3."""

    def __init__(self, width: int = WIDTH) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.conv2(torch.relu(self.bn1(self.conv1(h))))


class DigitsODENet(nn.Module):
    """Stem (conv-BN-ReLU), 16 ODE blocks at 16 channels on 8x8, global average pool, linear head."""

    def __init__(self, width: int = WIDTH, depth: int = DEPTH) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(*[ODEBlock(width) for _ in range(depth)])
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.stem(x))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(h, 1), 1))


def odenet() -> nn.Module:
    return DigitsODENet()
