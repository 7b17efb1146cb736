"""DSA: Dataset Condensation with Differentiable Siamese Augmentation (Zhao & Bilen, ICML 2021).

DC's gradient matching with one randomly drawn transformation shared by the real and the synthetic images
of each class in every matching step (so the synthetic gradient flows through it), and non-Siamese DSA in
the inner-loop network training; DC's hyperparameters with real-image initialisation.

Rationale and the paper's recipe: docs/methods/dsa.md (augmentations: docs/methods/dsa-augmentation.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from smallset.config import option
from smallset.data import ImageDataset
from smallset.distill.base import Condenser, register_condenser
from smallset.distill.dc import DCCondenser, DCConfig


@dataclass
class DSAConfig(DCConfig):
    """DC's hyper-parameters (docs/methods/dc.md#dc-loops) with the DSA README's real-image init and a
    strategy string (docs/methods/dsa-augmentation.md#dsa-transformations)."""

    init: Literal["real", "noise"] = option("real", "initialise from real images or N(0,1) noise")
    dsa_strategy: str = option("", "DSA strategy, e.g. color_crop_cutout_flip_scale_rotate; empty = the default for "
                                   "the channel count")

    @classmethod
    def for_ipc(cls, ipc: int) -> "DSAConfig":
        """DC's per-ipc loops (docs/methods/dc.md#dc-loops, with its fallback for other ipc); init stays
        ``real``."""
        base = DCConfig.for_ipc(ipc)
        return cls(outer_loop=base.outer_loop, inner_loop=base.inner_loop)


@register_condenser("dsa")
class DSACondenser(DCCondenser):
    """DC with Siamese augmentation in matching and DSA augmentation in the inner loop
    (docs/methods/dsa.md#dsa-changes)."""

    config_cls = DSAConfig
    demo = {"iterations": 5, "outer_loop": 2, "inner_loop": 5, "batch_real": 64}
    smoke = {"iterations": 4, "outer_loop": 2, "inner_loop": 1, "batch_real": 4, "batch_train": 2}
    siamese = True

    def paper_recipe(self, dataset_key, channels, info):
        return Condenser.paper_recipe(self, dataset_key, channels, info)  # DSA's evaluation, not DC's

    def make_augment(self, ds: ImageDataset):
        from smallset.augment import DSA

        return DSA(strategy=self.config.dsa_strategy or self.dsa_strategy_for(ds.channels, ds.dataset_key))
