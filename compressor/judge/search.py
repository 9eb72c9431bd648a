"""The one try-judge-keep helper of every search: a candidate is judged with the run's budget rule and either kept or
undone, so no stage writes its own restore logic.

Two shapes of search use it:
- in place (shrink's result, prune's steps, prune's codebook): `Snapshot` holds the state to return to and
  `attempt` changes the model, judges it, and restores the snapshot unless the decision keeps it;
- over fresh candidates of growing size (rpg's ring, basis's K): `first_within` draws candidates, each fitted only
  when drawn, until one is within budget (or there is no validation data to judge it), and returns all it drew.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterable, Protocol, TypeVar

import torch
from torch import nn

from compressor.judge.budget import BudgetDecision

T = TypeVar("T")
_END = object()
C = TypeVar("C")


class Masks(Protocol):
    """What a snapshot needs of the run's mask registry."""

    def state(self) -> dict[str, torch.Tensor]: ...

    def set(self, name: str, keep: torch.Tensor) -> None: ...


class Snapshot:
    """A model's parameters and buffers (and, if given, the run's masks) as they are now, to return to."""

    def __init__(self, model: nn.Module, masks: Masks | None = None) -> None:
        self.model, self.masks = model, masks
        self.state = copy.deepcopy(model.state_dict())
        self.mask_state = masks.state() if masks is not None else None

    def restore(self) -> None:
        self.model.load_state_dict(self.state)
        if self.masks is not None:
            for name, keep in self.mask_state.items():
                self.masks.set(name, keep)


@dataclass
class Attempt(Generic[T]):
    """One candidate tried in place: what the change returned, the decision on it, and whether it was kept."""

    value: T
    decision: BudgetDecision
    kept: bool


def attempt(change: Callable[[], T], judge: Callable[[], BudgetDecision], snapshot: Snapshot,
            keep: Callable[[BudgetDecision], bool] | None = None) -> Attempt[T]:
    """Change the model in place, judge it, and restore `snapshot` (taken before the change) unless `keep(decision)`
    (default: the decision accepts it)."""
    value = change()
    decision = judge()
    kept = decision.accepted if keep is None else keep(decision)
    if not kept:
        snapshot.restore()
    return Attempt(value, decision, kept)


def first_within(candidates: Iterable[C], decision_of: Callable[[C], BudgetDecision | None],
                 stop: Callable[[], bool] | None = None) -> list[C]:
    """Draw candidates in order until one is within budget or unjudged (`decision_of` gives None), or `stop()` says
    to draw no more (--time-limit; asked before every candidate after the first); every candidate drawn, in order.
    A generator fits each candidate only when drawn, and may free the rejected ones when resumed."""
    tried: list[C] = []
    drawn = iter(candidates)
    while not (tried and stop is not None and stop()):  # asked before the next candidate is fitted
        candidate = next(drawn, _END)
        if candidate is _END:
            break
        tried.append(candidate)
        decision = decision_of(candidate)
        if decision is None or decision.accepted:
            break
    return tried


def lowest_bound(tried: list[Any], decision_of: Callable[[Any], BudgetDecision]) -> Any:
    """The candidate whose bound on its validation drop is lowest (the first among equal bounds)."""
    return min(tried, key=lambda c: decision_of(c).bound)
