"""K-center greedy on penultimate features, per class (condensation-methods.md §6; Sener & Savarese 2018
as used by the dataset-condensation papers' coreset baselines).

Within each class: start with the example nearest (Euclidean) to the class mean feature, then repeatedly
add the example whose distance to its nearest selected centre is largest (farthest-point traversal).
Features are ``ctx.model.embed(x)`` of a seeded random or briefly trained model
(:class:`prune.features.FeatureSelector`); ``score`` returns them (N×D), ``select`` runs the greedy loop
(one batched distance update per step, float32) and keeps the first round(fraction·n_c) per class.
Weights are 1. ``info["kcenter_radius"]``: the largest distance from a class example to its nearest
selected centre (the k-center objective), averaged over classes.
"""
from __future__ import annotations

import torch

from smallset.prune.base import register_selector
from smallset.prune.features import FeatureConfig, FeatureSelector


def kcenter_order(feats: torch.Tensor, k: int) -> tuple[torch.Tensor, float]:
    """Positions of the first ``k`` k-center-greedy picks (ties: lowest position) and the covering radius
    max_i min_{c ∈ picks} ‖f_i − f_c‖ (0 when every example is picked)."""
    n = feats.shape[0]
    k = max(0, min(int(k), n))
    order = torch.empty(k, dtype=torch.long, device=feats.device)
    if k == 0:
        return order, 0.0
    sq = (feats * feats).sum(1)

    def sqdist_to(j):
        return (sq - 2 * (feats @ feats[j]) + sq[j]).clamp_min(0)

    mu = feats.mean(0)
    j = torch.argmin(sq - 2 * (feats @ mu))
    order[0] = j
    mind = sqdist_to(j)
    mind[j] = -1.0  # selected: never picked again (a duplicate point still has distance 0 ≥ −1)
    for i in range(1, k):
        j = torch.argmax(mind)
        order[i] = j
        mind = torch.minimum(mind, sqdist_to(j))
        mind[j] = -1.0
    radius = float(mind.max().clamp_min(0).sqrt()) if k < n else 0.0
    return order, radius


@register_selector("kcenter")
class KCenterSelector(FeatureSelector):
    """K-center greedy (farthest-point) per class on ``model.embed`` features."""

    config_cls = FeatureConfig
    quality_key = "kcenter_radius"

    def greedy_order(self, feats, k):
        return kcenter_order(feats, k)
