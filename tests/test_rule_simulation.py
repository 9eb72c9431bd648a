"""Monte Carlo check of the whole-search accounting (compressor/judge/looks.py): the rate at which a search keeps a
state whose true drop is over the budget, with the old rule (every look at the run's confidence, best epoch
selected on the judging set) and the new one (per-look confidence from looks.py, best epoch selected on a separate
slice).

The model, numpy only, vectorised over replications. Per sample 0/1 scores, the baseline right with probability
0.97. A candidate with true drop delta (points, on fresh data) loses a baseline-right sample with probability
L(delta) and wins a baseline-wrong one with probability GAIN, so delta = 100 (0.97 L - 0.03 GAIN). A share PERSIST
of the losses falls on fragile samples that every state at that drop or above loses (nested: compression hits them
again and again), and the same share of the wins on samples every state wins; the rest is churn, drawn afresh by
every fine-tune epoch (each epoch is a new state). Given a validation set, states are independent draws, so each is
summarised by its discordant counts n10 (baseline right, candidate wrong) and n01, and the paired z-bound of
judge/budget.py is computed from them (`z_bound`, checked against `drop_bound`). Searches are modelled in
`prune_search`, `growth_search` and `best_epoch_search`; `over_rate` and `acceptance_at_zero` are what is asserted.
"""
from __future__ import annotations

import math
from functools import lru_cache
from statistics import NormalDist
from typing import NamedTuple

import numpy as np
import pytest
import torch

from compressor.defaults import DEFAULT_CONFIDENCE
from compressor.judge.budget import drop_bound
from compressor.judge.looks import growth_chances, per_look_confidence, prune_chances

BASE_RIGHT, GAIN, PERSIST = 0.97, 0.25, 0.5
REPS = 2000
ALPHA = 1 - DEFAULT_CONFIDENCE
PATIENCE, LOOKAHEAD, EPOCHS = 2, 2, 3  # prune's former defaults (the most looks per step); fine-tunes of 3 epochs
PRUNE_DROPS = (0.0, 0.3, 0.55, 0.8, 1.05, 1.3, 1.55, 1.8, 2.05, 2.3, 2.55, 2.8)  # rising: 0.05 past each budget
GROWTH_DROPS = (2.05, 1.55, 1.05, 0.55, 0.0)  # K = 5 sizes, most compressed first
BEST_EPOCHS = 5  # the best-epoch search: start (1 point worse) + 5 epochs


def z_of(confidence: float) -> float:
    return NormalDist().inv_cdf(confidence)


def z_bound(n10: np.ndarray, n01: np.ndarray, n: int, z: float) -> np.ndarray:
    """judge/budget.py's drop_bound for 0/1 scores from the discordant counts: d_i is 100, -100 or 0, so the sum of
    squared deviations is 100^2 (n10 + n01) - n mean^2."""
    mean = 100.0 * (n10 - n01) / n
    var = np.maximum(1e4 * (n10 + n01) - n * mean ** 2, 0.0) / max(n - 1, 1)
    return mean + z * np.sqrt(var / n)


class World:
    """One validation set (or selection slice) of n samples per replication, and the states judged on it."""

    def __init__(self, rng: np.random.Generator, n: int, reps: int = REPS, persist: float = PERSIST) -> None:
        self.rng, self.n, self.persist = rng, n, persist
        right = rng.random((reps, n)) < BASE_RIGHT
        self.u_right = np.where(right, rng.random((reps, n)), 2.0)  # fragility of the baseline-right samples
        self.n_right = right.sum(1)
        self.n_wrong = n - self.n_right
        self.won = rng.binomial(self.n_wrong, persist * GAIN)  # baseline-wrong samples every state wins
        self._lost = lru_cache(maxsize=None)(self._persistent_losses)

    def _persistent_losses(self, drop: float) -> np.ndarray:
        return (self.u_right < self.persist * loss_rate(drop)).sum(1)

    def state(self, drop: float) -> tuple[np.ndarray, np.ndarray]:
        """(n10, n01) of one freshly fine-tuned state with true drop `drop`, per replication."""
        rate, lost = loss_rate(drop), self._lost(drop)
        churn = (1 - self.persist) * rate / (1 - self.persist * rate)
        churn_win = (1 - self.persist) * GAIN / (1 - self.persist * GAIN)
        return (lost + self.rng.binomial(self.n_right - lost, churn),
                self.won + self.rng.binomial(self.n_wrong - self.won, churn_win))


def loss_rate(drop: float) -> float:
    return (drop / 100 + (1 - BASE_RIGHT) * GAIN) / BASE_RIGHT


class Kept(NamedTuple):
    """A fine-tune's kept state per replication: its counts on val, its true drop, its counts where it was picked."""

    n10: np.ndarray
    n01: np.ndarray
    drop: np.ndarray
    picked10: np.ndarray
    picked01: np.ndarray


def tuned(val: World, drops: list[float], select: World | None, carry: Kept | None = None) -> Kept:
    """The state a fine-tune keeps among fresh states of true drops `drops` (and `carry`, the state it started from,
    judged before): the lowest observed drop on the slice `select`, or on `val` itself when None."""
    on_val = [val.state(d) for d in drops]
    on_pick = on_val if select is None else [select.state(d) for d in drops]
    shape = val.n_right.shape
    rows = [(v10, v01, np.full(shape, d), p10, p01) for (v10, v01), (p10, p01), d in zip(on_val, on_pick, drops)]
    cols = [np.stack(c) for c in zip(*rows, *([carry] if carry is not None else []))]
    pick = (cols[3] - cols[4]).argmin(0)[None]
    return Kept(*(np.take_along_axis(c, pick, 0)[0] for c in cols))


def accepted(kept: Kept, n: int, z: float, budget: float) -> np.ndarray:
    return z_bound(kept.n10, kept.n01, n, z) <= budget + 1e-9


def prune_search(val: World, select: World | None, z: float, budget: float, drops=PRUNE_DROPS) -> np.ndarray:
    """prune's loop: per step up to 1 + PATIENCE judged fine-tune rounds (each keeping its best of start + EPOCHS),
    LOOKAHEAD steps past a rejection; the true drop of the last accepted step (0: none)."""
    reps = val.n_right.shape
    kept, rejected, alive = np.zeros(reps), np.zeros(reps, int), np.ones(reps, bool)
    for drop in drops:
        passed, carry = np.zeros(reps, bool), None
        for r in range(1 + PATIENCE):  # a round's start: the pruned, untuned state, then the last round's
            carry = tuned(val, ([drop + 1.0] if r == 0 else []) + [drop] * EPOCHS, select, carry)
            passed |= accepted(carry, val.n, z, budget)
        step = alive & passed
        kept[step], rejected[step] = drop, 0
        rejected[alive & ~passed] += 1
        alive &= rejected <= LOOKAHEAD
    return kept


def growth_search(val: World, select: World | None, z: float, budget: float, drops=GROWTH_DROPS) -> np.ndarray:
    """rpg / basis: sizes from most compressed down, each a projection (1 point worse) fine-tuned EPOCHS epochs,
    the first within budget kept (none: the input, drop 0)."""
    kept, open_ = np.zeros(val.n_right.shape), np.ones(val.n_right.shape, bool)
    for drop in drops:
        fit = tuned(val, [drop + 1.0] + [drop] * EPOCHS, select)
        take = open_ & accepted(fit, val.n, z, budget)
        kept[take], open_ = fit.drop[take], open_ & ~take
    return kept


def best_epoch_search(val: World, select: World | None, z: float, budget: float, drop: float) -> np.ndarray:
    """One fine-tune keeping the best of start + BEST_EPOCHS epochs (all at `drop`, the start 1 point worse), then
    judged: the kept state's true drop if accepted, else 0."""
    fit = tuned(val, [drop + 1.0] + [drop] * BEST_EPOCHS, select)
    return np.where(accepted(fit, val.n, z, budget), fit.drop, 0.0)


NEW_CHANCES = {"prune": prune_chances(PATIENCE, LOOKAHEAD), "growth": growth_chances(len(GROWTH_DROPS)),
               "best_epoch": 1}
OLD = {"chances": 1, "on_slice": False}  # every look at the run's confidence, the best epoch picked on val


def over_rate(search: str, n: int, budget: float, chances: int | None = None, on_slice: bool = True,
              persist: float = PERSIST, flat: bool = False, seed: int = 0) -> float:
    """How often the search keeps a state whose true drop is over `budget`, judging each look at the confidence
    for `chances` looks (None: the new rule's) and picking best epochs on a separate slice or on val. `flat`: every
    over-budget candidate 0.05 points over (the union bound's worst case) instead of rising drops."""
    chances = NEW_CHANCES[search] if chances is None else chances
    rng = np.random.default_rng([seed, n, int(budget * 100), chances, int(on_slice), int(persist * 100), int(flat)])
    val = World(rng, n, persist=persist)
    select = World(rng, n, persist=persist) if on_slice else None
    z = z_of(per_look_confidence(DEFAULT_CONFIDENCE, chances))
    over = budget + 0.05
    if search == "prune":
        kept = prune_search(val, select, z, budget, (0.0,) + (over,) * 8 if flat else PRUNE_DROPS)
    elif search == "growth":
        kept = growth_search(val, select, z, budget, (over,) * 4 + (0.0,) if flat else GROWTH_DROPS)
    else:
        kept = best_epoch_search(val, select, z, budget, over)
    return float((kept > budget + 1e-9).mean())


def acceptance_at_zero(search: str, n: int, budget: float, chances: int | None = None, seed: int = 0) -> float:
    """The rule's power: how often a candidate with true drop 0 is accepted (prune: its first step, in up to
    1 + PATIENCE rounds), best epochs picked on a separate slice."""
    rng = np.random.default_rng([seed, n, int(budget * 100), 7])
    val, select = World(rng, n), World(rng, n)
    z = z_of(per_look_confidence(DEFAULT_CONFIDENCE, NEW_CHANCES[search] if chances is None else chances))
    passed, carry = np.zeros(val.n_right.shape, bool), None
    for r in range(1 + PATIENCE if search == "prune" else 1):
        carry = tuned(val, ([1.0] if r == 0 else []) + [0.0] * EPOCHS, select, carry)
        passed |= accepted(carry, n, z, budget)
    return float(passed.mean())


def limit() -> float:
    """1 - confidence plus three simulation standard errors."""
    return ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / REPS)


CASES = [(s, n, b) for s in ("prune", "growth", "best_epoch") for n in (180, 1000) for b in (0.5, 1.0)]


def test_the_numpy_bound_is_drop_bound():
    rng = np.random.default_rng(1)
    for n in (2, 37, 180, 1000):
        b, c = rng.random(n) < 0.9, rng.random(n) < 0.85
        n10, n01 = int((b & ~c).sum()), int((~b & c).sum())
        for conf in (0.75, 0.95, 0.99):
            want = drop_bound(torch.tensor(b, dtype=torch.float64), torch.tensor(c, dtype=torch.float64), conf)[1]
            assert abs(float(z_bound(np.array(n10), np.array(n01), n, z_of(conf))) - want) < 1e-9


def test_the_model_has_the_true_drops_it_says():
    world = World(np.random.default_rng(2), 1000)
    for drop in (0.0, 1.05, 2.8):
        n10, n01 = world.state(drop)
        assert abs(float(np.mean(100 * (n10 - n01) / 1000)) - drop) < 0.05


def test_the_accounting():
    assert per_look_confidence(0.75, 1) == 0.75
    assert abs(per_look_confidence(0.75, 9) - (1 - 0.25 / 9)) < 1e-12
    assert prune_chances(2, 2) == 9 and prune_chances(2, 2, calibrated=True) == 12
    assert prune_chances(2, 2, tuned=False) == 3 and prune_chances(0, 0) == 1
    assert growth_chances(5) == 5
    for bad in ((1.0, 1), (0.75, 0), (0.75, 1.5)):
        with pytest.raises(ValueError):
            per_look_confidence(*bad)


@pytest.mark.parametrize("search,n,budget", CASES)
def test_the_new_rule_keeps_an_over_budget_state_at_most_alpha(search, n, budget):
    assert over_rate(search, n, budget) <= limit()


@pytest.mark.parametrize("search,n,budget", CASES)
def test_the_old_rule_keeps_over_budget_states_more_often_than_it_says(search, n, budget):
    """The regression guarded: every look at 75% and the best epoch chosen on the judging set."""
    assert over_rate(search, n, budget, **OLD) > limit()


@pytest.mark.parametrize("search", ["prune", "growth", "best_epoch"])
def test_the_new_rule_holds_when_every_look_is_fresh_churn(search):
    """No fragile samples: every state's errors drawn afresh, so repeated looks are as independent as they get."""
    assert over_rate(search, 1000, 1.0, persist=0.0) <= limit()


@pytest.mark.parametrize("search", ["prune", "growth"])
def test_every_over_budget_look_is_counted(search):
    """Every over-budget candidate just over the budget (the union bound's worst case): the new count holds, and
    counting fewer looks (prune: the patience rounds but not the lookahead steps; growth: none) does not."""
    assert over_rate(search, 1000, 1.0, persist=0.0, flat=True) <= limit()
    fewer = 1 + PATIENCE if search == "prune" else 1
    assert over_rate(search, 1000, 1.0, chances=fewer, persist=0.0, flat=True) > limit()


@pytest.mark.xfail(strict=True, reason="the paired z-bound passes an at-budget candidate more often than its "
                                       "confidence says when few samples disagree (180 samples, 0.5 points)")
def test_the_per_look_bound_holds_with_few_discordant_samples():
    assert over_rate("growth", 180, 0.5, persist=0.0, flat=True) <= limit()


@pytest.mark.parametrize("search", ["prune", "growth", "best_epoch"])
def test_the_new_rule_still_accepts_a_candidate_without_a_drop(search):
    """Not vacuous: a rule that rejected everything would keep nothing over budget too."""
    assert acceptance_at_zero(search, 1000, 1.0) > 0.7
