"""The checks docs/ALGORITHMS.md §1 asks of shrink, on a real model and data: the fraction of small weights grows
epoch over epoch under selective shrinkage (and not without it), and the manifold-preserving term falls while a
pruned model is fine-tuned with it (faster than without it)."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from compressor.algorithms.prune.policies import ranked_masks
from compressor.algorithms.shrink.stage import small_fraction
from compressor.core.features import FeatureTap, manifold_loss
from compressor.core.shrinkage import ShrinkConfig, run_shrinkage, shrink_targets
from compressor.run.pipeline import RunOptions
from compressor.run.prepare import prepare
from compressor.run.progress import Reporter
from compressor.runtime.calls import call_model
from tests.conftest import HELDOUT, SAMPLES, TRAIN, VAL


def context():
    opts = RunOptions(model=SAMPLES / "digits_mlp.pt2", pipeline=["shrink"], data=HELDOUT, out=Path("unused"),
                      train_data=TRAIN, val_data=VAL)
    return prepare(opts, Reporter(quiet=True))[0]


@pytest.mark.slow
def test_small_weight_fraction_grows_epoch_over_epoch_under_shrinkage_only():
    ctx = context()
    start = copy.deepcopy(ctx.model.state_dict())
    curves = {}
    for gamma in (1e-4, 0.0):
        ctx.model.load_state_dict(start)
        cfg = ShrinkConfig(gamma=gamma)
        names = shrink_targets(ctx.weights, cfg)
        curve = [small_fraction(ctx.model, names)]
        for _ in range(3):
            run_shrinkage(ctx, cfg, 1, "shrink", keep_start=False)
            curve.append(small_fraction(ctx.model, names))
        curves[gamma] = curve
    grows = curves[1e-4]
    assert all(b > a for a, b in zip(grows, grows[1:])), grows
    assert grows[-1] > 2 * curves[0.0][-1], curves


def manifold_distance(ctx, names) -> float:
    taps = [FeatureTap(ctx.model, names), FeatureTap(ctx.original, names)]
    try:
        batch = next(iter(ctx.val.batches(256)))
        with torch.no_grad():
            call_model(ctx.model, batch, ctx.device)
            call_model(ctx.original, batch, ctx.device)
            return float(manifold_loss(taps[0].features, taps[1].features))
    finally:
        for t in taps:
            t.close()


@pytest.mark.slow
def test_manifold_term_falls_while_fine_tuning_a_pruned_model():
    ctx = context()
    names = shrink_targets(ctx.weights, ShrinkConfig())
    params = dict(ctx.model.named_parameters())
    ones = {n: torch.ones_like(params[n], dtype=torch.bool) for n in names}
    for n, m in ranked_masks("blinded", {n: params[n] for n in names}, ones, 0.85).items():
        ctx.masks.set(n, m)
    ctx.masks.apply(ctx.model)
    pruned = copy.deepcopy(ctx.model.state_dict())
    before = manifold_distance(ctx, names)
    after = {}
    for mu in (1.0, 0.0):
        ctx.model.load_state_dict(pruned)
        run_shrinkage(ctx, ShrinkConfig(mu=mu, gamma=0.0), 2, "fine-tune", keep_start=False)
        after[mu] = manifold_distance(ctx, names)
    assert after[1.0] < 0.8 * before, (before, after)
    assert after[1.0] < after[0.0], after
