"""The coreset-selector interface and registry.

A selector takes a dataset and returns the indices it keeps, their weights and, for methods that rank
examples, a score for every example. Ranking methods split the work in two: :meth:`Selector.score`
(expensive, computed once per source/model/seed/settings and cached by the orchestration layer) and
:meth:`Selector.select` (cheap, once per fraction). ``higher_is_keep`` says which end of the score
ranking is kept; tests pin it for every scorer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, ClassVar

import torch

from smallset.context import RunContext
from smallset.data import ImageDataset
from smallset.errors import SmallsetError
from smallset.registry import Registry


@dataclass
class NoConfig:
    """A method without hyperparameters."""


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


class Selector:
    """Base class. Subclasses set ``config_cls`` (a dataclass with the paper's defaults) and implement
    :meth:`select` (and :meth:`score` when they rank examples)."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "prune"
    config_cls: ClassVar[type] = NoConfig
    higher_is_keep: ClassVar[bool | None] = None  # None: this selector has no scores
    # True when the score depends on the scoring model: the cache key then includes it.
    uses_model: ClassVar[bool] = False
    # Names of the config fields that change the scores (the rest only change the selection step);
    # the orchestration layer caches scores on (source digest, model, seed, these fields).
    score_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.config_cls()

    def params(self) -> dict:
        return config_to_dict(self.config)

    def score_params(self) -> dict:
        return {k: v for k, v in self.params().items() if k in self.score_fields}

    def score(self, ds: ImageDataset, ctx: RunContext) -> torch.Tensor | None:
        """Per-example scores (or features) computed once; None for methods that do not rank."""
        return None

    def select(self, ds: ImageDataset, fraction: float, ctx: RunContext, scores: Any = None) -> Selection:
        raise NotImplementedError


SELECTORS: Registry[type[Selector]] = Registry("pruning method")


def register_selector(name: str):
    def deco(cls: type[Selector]) -> type[Selector]:
        cls.name = name
        return SELECTORS.register(name)(cls)

    return deco


def config_to_dict(config: Any) -> dict:
    if config is None or not is_dataclass(config):
        return {}
    return {f.name: getattr(config, f.name) for f in fields(config)}


def check_fraction(fraction: float) -> float:
    try:
        fraction = float(fraction)
    except (TypeError, ValueError):
        raise SmallsetError(f"--fraction must be a number in (0, 1], not {fraction!r}.") from None
    if not (0.0 < fraction <= 1.0) or math.isnan(fraction):
        raise SmallsetError(f"--fraction must lie in (0, 1]; got {fraction}.")
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
