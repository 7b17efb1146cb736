"""Herding on penultimate features, per class (condensation-methods.md §6; Welling 2009 as used by the
dataset-condensation papers' coreset baselines).

Within each class, with μ the class mean feature and S the sum of the features selected so far, step i
(0-based) takes the unselected example closest (Euclidean) to (i+1)·μ − S, so the running mean of the
selection tracks μ. Features are ``ctx.model.embed(x)`` of a seeded random or briefly trained model
(:class:`prune.features.FeatureSelector`); ``score`` returns them (N×D), ``select`` runs the greedy loop
(one batched distance computation per step, float32) and keeps the first round(fraction·n_c) per class.
Weights are 1. ``info["herding_mean_error"]``: ‖mean(selected) − μ‖, averaged over classes.
"""
from __future__ import annotations

import torch

from smallset.prune.base import register_selector
from smallset.prune.features import FeatureConfig, FeatureSelector


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

    config_cls = FeatureConfig
    quality_key = "herding_mean_error"

    def greedy_order(self, feats, k):
        order = herding_order(feats, k)
        err = float(torch.linalg.vector_norm(feats[order].mean(0) - feats.mean(0))) if k else 0.0
        return order, err
