"""Class-balanced random selection: the baseline every method must beat.

Per class, round(fraction × class size) examples (remainder placed deterministically, see
:func:`smallset.prune.base.class_budgets`), drawn uniformly without replacement with a seeded generator.
All weights are 1.

Rationale: docs/methods/random.md.
"""
from __future__ import annotations

import torch

from smallset.context import RunContext
from smallset.data import ImageDataset
from smallset.prune.base import Selection, Selector, class_budgets, register_selector


@register_selector("random")
class RandomSelector(Selector):
    def select(self, ds: ImageDataset, fraction: float, ctx: RunContext, prepared=None) -> Selection:
        gen = ctx.generator()
        budgets = class_budgets(ds.class_counts(), fraction)
        keep = []
        for idx, k in zip(ds.class_indices(), budgets):
            keep.append(idx[torch.randperm(len(idx), generator=gen)[:k]])
        indices = torch.sort(torch.cat(keep)).values
        return Selection(indices, torch.ones(len(indices)))
