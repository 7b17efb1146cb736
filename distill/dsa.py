"""DSA: Dataset Condensation with Differentiable Siamese Augmentation (Zhao & Bilen, ICML 2021).

Spec: condensation-methods.md §3.1 — exactly DC's loop (§2.3, :class:`distill.dc.DCCondenser`) with
(a) inside every class-matching step, the real batch and the synthetic images of that class augmented by
ONE randomly drawn transformation shared by all of their images (:meth:`distill.augment.DSA.siamese`,
§3.3), so the synthetic gradient flows through the augmentation; (b) the inner-loop network training
augmented with non-Siamese DSA (per-image parameters, one family per mini-batch). Hyper-parameters as DC
(same per-ipc loops, lr_img 0.1, 1000 iterations) with ``init='real'`` (the README command). Evaluation
of a DSA set should use DSA augmentation too (§1.4: protocol ``paper-1000`` with ``augment='dsa'``).

Augmentation parameters come from the checkpointed generator ``self.generators['aug']`` (the reference
seeds from the wall clock), so runs are reproducible and resume exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from smallset.data import ImageDataset
from smallset.distill.base import register_condenser
from smallset.distill.dc import DCCondenser, DCConfig


@dataclass
class DSAMethodConfig(DCConfig):
    """DC's hyper-parameters (§2.4) with the DSA README's real-image init and a strategy string (§3.2)."""

    init: Literal["real", "noise"] = field(default="real", metadata={"help": "initialise from real images or N(0,1) noise"})
    dsa_strategy: str = field(default="", metadata={
        "help": "DSA strategy, e.g. color_crop_cutout_flip_scale_rotate; empty = the default for the channel count"})

    @classmethod
    def for_ipc(cls, ipc: int) -> "DSAMethodConfig":
        """DC's per-ipc loops (§2.4, with its fallback for other ipc); init stays ``real``."""
        base = DCConfig.for_ipc(ipc)
        return cls(outer_loop=base.outer_loop, inner_loop=base.inner_loop)


@register_condenser("dsa")
class DSACondenser(DCCondenser):
    """DC with Siamese augmentation in matching and DSA augmentation in the inner loop (§3.1)."""

    config_cls = DSAMethodConfig
    siamese = True

    def make_augment(self, ds: ImageDataset):
        from smallset.distill.augment import DSA, default_strategy

        return DSA(strategy=self.config.dsa_strategy or default_strategy(ds.channels))
