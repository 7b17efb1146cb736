"""K-center greedy on penultimate features, per class (Sener & Savarese, ICLR 2018), the coreset baseline
of the dataset-condensation papers.

Starts from the example nearest the class mean feature, then repeatedly adds the example farthest from its
nearest selected centre; the first round(fraction·n_c) picks are kept, weights 1.

Rationale and the paper's recipe: docs/methods/kcenter.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from smallset.config import option
from smallset.prune._features import FeatureConfig, FeatureSelector
from smallset.prune.base import register_selector


@dataclass
class KCenterConfig(FeatureConfig):
    """Features of the model trained 5 epochs by default: measured better than the untrained model's at every
    fraction of MNIST (BENCHMARKS.md, "Defaults chosen by measurement")."""

    feature_epochs: int = option(5, "0: features of the randomly initialised (seeded) model; N: train it N epochs "
                                    "on the data first (default 5, measured better than 0)", prepare=True, ge=0)


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

    config_cls = KCenterConfig
    demo = {"feature_epochs": 1}
    smoke = {"feature_epochs": 1}
    quality_key = "kcenter_radius"

    def greedy_order(self, feats, k):
        return kcenter_order(feats, k)
