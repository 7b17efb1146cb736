"""The selector side of the method contract (:mod:`smallset.method`) and its registry.

A selector keeps a weighted subset of real examples. Ranking selectors compute their per-example scores
(or features) in :meth:`Selector.prepare`, which the pipeline caches, and turn them into a selection for
each fraction in :meth:`Selector.select`; ``higher_is_keep`` says which end of a ranking is kept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from smallset.config import NoConfig  # noqa: F401  (re-exported for method modules)
from smallset.context import RunContext
from smallset.data import ImageDataset
from smallset.errors import SmallsetError
from smallset.method import Method, Reduction, register_method
from smallset.registry import Registry


@dataclass
class Selection:
    indices: torch.Tensor  # int64 rows of the source dataset that are kept
    weights: torch.Tensor  # float32, one per kept row: scales that row's loss in training
    scores: torch.Tensor | None = None  # float32, one per source row (ranking methods only)
    info: dict[str, Any] = field(default_factory=dict)  # method-specific results (metrics, curves)

    def __post_init__(self):
        self.indices = torch.as_tensor(self.indices, dtype=torch.long)
        self.weights = torch.as_tensor(self.weights, dtype=torch.float32)
        if self.indices.shape != self.weights.shape:
            raise ValueError("a selection needs one weight per index")
        if len(torch.unique(self.indices)) != len(self.indices):
            raise ValueError("a selection must not repeat an index")


class Selector(Method):
    """Base class of selectors: implement :meth:`select` (and :meth:`prepare` when they rank examples)."""

    kind: ClassVar[str] = "prune"
    budget_unit: ClassVar[str] = "fraction"
    higher_is_keep: ClassVar[bool | None] = None  # None: this selector has no ranking scores

    def select(self, ds: ImageDataset, fraction: float, ctx: RunContext, prepared: Any = None) -> Selection:
        raise NotImplementedError

    def reduce(self, ds: ImageDataset, budget: float, ctx: RunContext, prepared: Any = None) -> Reduction:
        if prepared is None and self.has_prepare():
            prepared = self.prepare(ds, ctx)
        sel = self.select(ds, check_fraction(budget), ctx, prepared)
        scores = sel.scores if sel.scores is not None else (prepared if _is_score_vector(prepared, ds) else None)
        return Reduction(ds.subset(sel.indices, sel.weights), dict(sel.info), scores)


def _is_score_vector(value: Any, ds: ImageDataset) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim == 1 and len(value) == len(ds)


SELECTORS: Registry[type[Selector]] = Registry("pruning method")


def register_selector(name: str):
    return register_method(SELECTORS, name)


def check_fraction(fraction: float) -> float:
    try:
        fraction = float(fraction)
    except (TypeError, ValueError):
        raise SmallsetError(f"fraction must be a number in (0, 1], not {fraction!r}.", option="fraction") from None
    if not (0.0 < fraction <= 1.0) or math.isnan(fraction):
        raise SmallsetError(f"fraction must lie in (0, 1]; got {fraction}.", option="fraction")
    return fraction


def class_budgets(counts: list[int], fraction: float) -> list[int]:
    """Examples to keep per class: round(fraction × class size) per class.

    The total is round(fraction × N). Per-class quotas start at floor(fraction × n_c); the remainder
    goes one each to the classes with the largest fractional part, ties to the lower class index, so the
    split is deterministic. Every non-empty class keeps at least one example while the total allows.
    """
    fraction = check_fraction(fraction)
    total = int(math.floor(fraction * sum(counts) + 0.5))
    exact = [fraction * c for c in counts]
    quota = [int(math.floor(e)) for e in exact]
    order = sorted(range(len(counts)), key=lambda c: (-(exact[c] - quota[c]), c))
    for c in order[: max(0, total - sum(quota))]:
        quota[c] += 1
    # No class disappears entirely: move a slot from the largest quota to an empty non-empty class.
    for c in range(len(counts)):
        if counts[c] > 0 and quota[c] == 0 and total >= sum(1 for n in counts if n > 0):
            donor = max(range(len(counts)), key=lambda k: (quota[k], k))
            quota[donor] -= 1
            quota[c] += 1
    return [min(q, n) for q, n in zip(quota, counts)]
