"""Herding on penultimate features, per class (Welling, ICML 2009), the coreset baseline of the
dataset-condensation papers.

Each step takes the unselected example closest to (i+1)·μ − (sum of the selected features), so the running
mean of the selection tracks the class mean μ; the first round(fraction·n_c) picks are kept, weights 1.

Rationale and the paper's recipe: docs/methods/herding.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from smallset.prune._features import FeatureConfig, FeatureSelector
from smallset.prune.base import register_selector


@dataclass
class HerdingConfig(FeatureConfig):
    """Features of the untrained (seeded) model by default: measured better than a model trained 5 epochs at
    every fraction of MNIST (BENCHMARKS.md, "Defaults chosen by measurement")."""


def herding_order(feats: torch.Tensor, k: int) -> torch.Tensor:
    """Positions (in ``feats``' rows) of the first ``k`` herding picks; ties go to the lowest position."""
    n = feats.shape[0]
    k = max(0, min(int(k), n))
    mu = feats.mean(0)
    sq = (feats * feats).sum(1)
    taken = torch.zeros(n, dtype=torch.bool, device=feats.device)
    total = torch.zeros_like(mu)
    order = torch.empty(k, dtype=torch.long, device=feats.device)
    inf = torch.tensor(float("inf"), dtype=feats.dtype, device=feats.device)
    for i in range(k):
        target = (i + 1) * mu - total
        # ‖f − target‖² up to the constant ‖target‖²: one mat-vec per step.
        d = torch.where(taken, inf, sq - 2 * (feats @ target))
        j = torch.argmin(d)
        order[i] = j
        taken[j] = True
        total += feats[j]
    return order


@register_selector("herding")
class HerdingSelector(FeatureSelector):
    """Herding (greedy mean matching) per class on ``model.embed`` features."""

    config_cls = HerdingConfig
    quality_key = "herding_mean_error"

    def greedy_order(self, feats, k):
        order = herding_order(feats, k)
        err = float(torch.linalg.vector_norm(feats[order].mean(0) - feats.mean(0))) if k else 0.0
        return order, err
