"""The scoring runs of the "data diet" scores (EL2N, GraNd; Paul, Ganguli & Dziugaite, NeurIPS 2021):
train several independently initialised models for a few epochs on the full data, score every example
with each in eval mode on clean inputs, average the scores, keep the highest.

Not a selector (registers nothing): :class:`ScoringConfig` holds the options both scores share,
:class:`ScoreRunSelector` the prepare (the runs and the average) and select (top per class) steps; the
method modules ``el2n`` and ``grand`` only say how one model scores the examples. Rationale and the
authors' recipe: docs/methods/el2n.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from smallset.config import option
from smallset.context import RunContext
from smallset.data import ImageDataset
from smallset.errors import SmallsetError
from smallset.method import Prepared, PreparesInUnits
from smallset.prune._features import keep_highest_selection, seeded_model
from smallset.prune._training import augment_flags, crop_flip, parse_epochs, warmup_multistep_lr
from smallset.prune.base import Selection, Selector

RUN_OFFSET = 1000  # run r draws its model from offset r·1000, its data order from +1, its augmentation from +2


@dataclass
class ScoringConfig:
    """The options shared by EL2N and GraNd: the number of scoring runs, the scoring epoch and the training
    recipe of the runs (the authors' CIFAR-10 recipe, docs/methods/el2n.md#el2n-recipe)."""

    models: int = option(10, "independently initialised scoring runs whose scores are averaged (paper: 10)",
                         prepare=True, ge=1)
    epochs: int = option(20, "training epochs of each scoring run before scoring (0: at initialisation)",
                         prepare=True, ge=0)
    lr: float = option(0.1, "SGD learning rate of the scoring runs (paper: 0.1)", prepare=True, gt=0)
    momentum: float = option(0.9, "SGD momentum of the scoring runs, Nesterov (paper: 0.9)", prepare=True, ge=0)
    weight_decay: float = option(5e-4, "SGD weight decay of the scoring runs (paper: 5e-4)", prepare=True, ge=0)
    batch_size: int = option(128, "mini-batch size of the scoring runs; the last partial batch of an epoch is "
                                  "dropped as in the authors' code (paper: 128)", prepare=True, ge=1)
    lr_milestones: str = option("60,120,160", "epochs at which the scoring runs' LR is multiplied by lr_gamma "
                                              "(paper: 60,120,160 of 200)", prepare=True)
    lr_gamma: float = option(0.2, "LR decay factor at each milestone (paper: 0.2)", prepare=True, gt=0)
    augment: Literal["none", "auto", "crop_flip", "crop"] = option(
        "auto", "augmentation of the scoring runs' training batches: reflect-pad-4 random crop and flip "
                "(auto: flip only colour images; paper: crop_flip); scoring itself uses clean inputs",
        prepare=True)
    balance: bool = option(True, "keep round(fraction*n_c) per class (like forgetting); off: the global top "
                                 "fraction (the paper)")


def scoring_run(ds: ImageDataset, ctx: RunContext, c: ScoringConfig, run: int, x: torch.Tensor,
                y: torch.Tensor) -> nn.Module:
    """Scoring run ``run``: a fresh ``ctx.model`` (seed offset run·1000) trained ``c.epochs`` epochs on the
    normalised ``x``/``y`` (on ``ctx.device``) with SGD (Nesterov), the multi-step schedule and crop/flip,
    each epoch one random permutation with the last partial batch dropped. Returned in eval mode."""
    model = seeded_model(ds, ctx, offset=RUN_OFFSET * run)
    if c.epochs > 0:
        crop, flip = augment_flags(c.augment, ds.channels)
        order = ctx.generator(RUN_OFFSET * run + 1)
        aug = ctx.generator(RUN_OFFSET * run + 2)
        milestones = parse_epochs(c.lr_milestones)
        opt = torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay,
                              nesterov=c.momentum > 0)
        n = len(y)
        batch = min(c.batch_size, n)
        model.train()
        for ep in range(c.epochs):
            for g in opt.param_groups:
                g["lr"] = warmup_multistep_lr(c.lr, ep, 0, milestones, c.lr_gamma)
            perm = torch.randperm(n, generator=order).to(x.device)
            for s in range(n // batch):  # drop_last, as the authors' loader
                idx = perm[s * batch:(s + 1) * batch]
                loss = F.cross_entropy(model(crop_flip(x[idx], aug, crop, flip)), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise SmallsetError("A scoring run diverged (non-finite weights); lower lr.", option="lr")
    model.eval()
    return model


class ScoreRunSelector(PreparesInUnits, Selector):
    """Base of EL2N and GraNd: :meth:`score_model` scores every example with one trained model; each scoring
    run is an independent unit of the preparation, which averages their scores; select keeps the highest
    scores (per class with ``balance``)."""

    config_cls = ScoringConfig
    higher_is_keep = True  # hardest first
    uses_model = True
    score_name = "score"

    def score_model(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One score per example (float, on any device) from one scoring model in eval mode."""
        raise NotImplementedError

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)  # the declared ranges
        parse_epochs(config.lr_milestones)

    def unit_count(self) -> int:
        return self.config.models

    def run_unit(self, ds: ImageDataset, ctx: RunContext, index: int) -> torch.Tensor:
        """Scoring run ``index``'s :meth:`score_model` scores (float64, CPU, one per example)."""
        self.check_config(self.config)
        if len(ds) == 0:
            raise SmallsetError("The dataset is empty; there is nothing to score.")
        x = ds.normalized().to(ctx.device)
        y = ds.labels.to(ctx.device)
        model = scoring_run(ds, ctx, self.config, index, x, y)
        scores = self.score_model(model, x, y).detach().double().cpu()
        if not torch.isfinite(scores).all():
            raise SmallsetError(f"The {self.score_name} scores of run {index} are not finite; lower lr.", option="lr")
        return scores

    def combine(self, ds: ImageDataset, ctx: RunContext, units: list[torch.Tensor]) -> Prepared:
        """The mean of the runs' scores (float32), and each run's mean score as run information."""
        total = torch.zeros(len(ds), dtype=torch.float64)
        for scores in units:
            total += scores
        return Prepared((total / len(units)).float(),
                        {f"run_mean_{self.score_name}": [float(s.mean()) for s in units]}, tuple(units))

    def select(self, ds: ImageDataset, fraction: float, ctx: RunContext, prepared=None) -> Selection:
        return keep_highest_selection(ds, self.prepared_value(ds, ctx, prepared), fraction, self.config.balance,
                                      ctx, self.score_name)
