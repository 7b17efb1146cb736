"""Random subsets at the step budget of a training-time method: the baseline CREST and InfoBatch are judged by.

Trains ``ctx.model`` (initialised exactly as CREST's) for ``epochs`` epochs on CREST's schedule; each epoch is
one pass over a fresh uniform random subset of floor(fraction·N) examples, so the run takes
ceil(floor(fraction·N)/B) steps per epoch: exactly CREST's budget (CREST's reference ``random`` baseline).
The returned selection lists every example trained on, weighted by how often; ``info`` holds the trained
model's test accuracy, the steps and the image passes.

Rationale: docs/methods/crest.md#crest-random-baseline.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from smallset.context import RunContext
from smallset.data import ImageDataset
from smallset.errors import SmallsetError
from smallset.models import seeded_model
from smallset.prune._training import (
    TrainingSchedule,
    TrainingTimeSelector,
    accuracy_on_test_split,
    augment_flags,
    crop_flip,
    parse_epochs,
    warmup_multistep_lr,
)
from smallset.prune.base import Selection, check_fraction, register_selector


@dataclass
class RandomStepsConfig(TrainingSchedule):
    """CREST's training fields and defaults (docs/methods/crest.md#crest-optimiser-schedule)."""


@register_selector("random_steps")
class RandomStepsSelector(TrainingTimeSelector):
    """Train on a fresh random floor(fraction·N) subset every epoch, on CREST's schedule and step budget."""

    config_cls = RandomStepsConfig
    smoke = {"epochs": 3, "batch_size": 12, "warmup_epochs": 0, "lr_milestones": ""}

    def select(self, ds: ImageDataset, fraction: float, ctx: RunContext, prepared=None) -> Selection:
        cfg = self.config
        fraction = check_fraction(fraction)
        n_epoch = math.floor(len(ds) * fraction)
        if n_epoch < 1:
            raise SmallsetError(f"fraction {fraction} of {len(ds)} examples is less than one example; use a larger "
                                f"fraction.", option="fraction")
        self.check_config(cfg)  # a config built by hand
        milestones = parse_epochs(cfg.lr_milestones)
        flags = augment_flags(cfg.augment, ds.channels)
        device = torch.device(ctx.device)
        model = seeded_model(ctx.model, ds.channels, ds.num_classes, ds.image_size, ctx.seed,
                             **(ctx.model_kwargs or {})).to(device)
        x, y = ds.normalized().to(device), ds.labels.to(device)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        gen, aug_gen = ctx.generator(11), ctx.generator(3)
        counts = torch.zeros(len(ds))
        steps = passes = 0
        model.train()
        t0 = time.perf_counter()
        for epoch in range(cfg.epochs):
            lr = warmup_multistep_lr(cfg.lr, epoch, cfg.warmup_epochs, milestones, cfg.lr_gamma)
            for group in opt.param_groups:
                group["lr"] = lr
            perm = torch.randperm(len(ds), generator=gen)[:n_epoch]
            for start in range(0, n_epoch, cfg.batch_size):
                idx = perm[start:start + cfg.batch_size]
                xb = crop_flip(x[idx.to(device)], aug_gen, *flags)
                if lr > 0:
                    loss = F.cross_entropy(model(xb), y[idx.to(device)])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    counts[idx] += 1
                    passes += len(idx)
                else:  # LR 0 (epoch 0 of the warm-up): a forward pass only, as CREST does
                    with torch.no_grad():
                        model(xb)
                steps += 1
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise SmallsetError(f"random_steps training diverged (non-finite weights); lower lr (now {cfg.lr:g}).",
                                option="lr")
        info = {"steps": float(steps), "image_passes": float(passes), "train_seconds": time.perf_counter() - t0}
        acc = accuracy_on_test_split(model, ctx, ds)
        if acc is not None:
            info["test_accuracy"] = acc
        indices = torch.nonzero(counts > 0, as_tuple=True)[0]
        return Selection(indices, counts[indices], info=info)
