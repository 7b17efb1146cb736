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

from smallset.budget import FRACTION, BudgetUnit
from smallset.config import NoConfig  # noqa: F401  (re-exported for method modules)
from smallset.context import RunContext
from smallset.data import ImageDataset
from smallset.errors import SmallsetError
from smallset.method import Method, Prepared, Reduction, register_method
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
    budget_unit: ClassVar[BudgetUnit] = FRACTION
    higher_is_keep: ClassVar[bool | None] = None  # None: this selector has no ranking scores
    # True for training-time methods (CREST, InfoBatch, random_steps): they train a model themselves within a
    # step budget and report its test accuracy; comparisons judge them by it, against random_steps.
    trains_model: ClassVar[bool] = False

    def select(self, ds: ImageDataset, fraction: float, ctx: RunContext, prepared: Any = None) -> Selection:
        raise NotImplementedError

    def reduce(self, ds: ImageDataset, budget: float, ctx: RunContext, prepared: Prepared | None = None) -> Reduction:
        check_fraction_fits(budget, ds.class_counts())
        state = self.state_for(ds, ctx, prepared)
        self.check_finite(state.value, "scores")
        sel = self.select(ds, check_fraction(budget), ctx, state.value)
        self.check_finite(sel.scores, "scores")
        self.check_finite(sel.weights, "weights")
        scores = sel.scores if sel.scores is not None else (state.value if _is_score_vector(state.value, ds) else None)
        return Reduction(ds.subset(sel.indices, sel.weights), {**state.info, **sel.info}, scores)

    def prepared_value(self, ds: ImageDataset, ctx: RunContext, prepared: Any) -> Any:
        """What :meth:`select` works from: the prepared value handed in, or (a direct call without one) the
        preparation's value, run now."""
        if isinstance(prepared, Prepared):
            return prepared.value
        return prepared if prepared is not None else self.state_for(ds, ctx, None).value

    # The config fields to lower when the scoring training diverges (named in the error sentence).
    divergence_options: ClassVar[tuple[str, ...]] = ("lr", "feature_lr")

    def check_finite(self, value: Any, what: str) -> None:
        """Refuse non-finite scores, features or weights (a diverged scoring run) with one sentence."""
        tensors = [value] if isinstance(value, torch.Tensor) else \
            [v for v in (value.values() if isinstance(value, dict) else value if isinstance(value, (list,
                                                                                                    tuple)) else ())
             if isinstance(v, torch.Tensor)]
        if all(not t.is_floating_point() or bool(torch.isfinite(t).all()) for t in tensors):
            return
        names = [n for n in self.divergence_options if hasattr(self.config, n)]
        lower = " or ".join(f"{n} (now {getattr(self.config, n):g})" for n in names) or "its learning rate"
        raise SmallsetError(f"{self.name} produced non-finite {what} (NaN or infinity): its training diverged. "
                            f"Lower {lower} and run again; no dataset was written.",
                            option=names[0] if names else None)


def _is_score_vector(value: Any, ds: ImageDataset) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim == 1 and len(value) == len(ds)


SELECTORS: Registry[type[Selector]] = Registry("pruning method")


def register_selector(name: str):
    return register_method(SELECTORS, name)


from smallset.budget import check_fraction, check_fraction_fits  # noqa: E402,F401  (torch-free; re-exported)


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
