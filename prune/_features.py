"""Shared helpers of the one-shot selectors: the seeded scoring model, batched embeddings, a short SGD
loop, and class-balanced ranking with seeded tie-breaking.

Not a selector (registers nothing). Used by ``herding``, ``kcenter`` (penultimate features, ``model.embed``),
``forgetting`` (the scoring model and its training loop) and ``geda`` (the model at θ₀ and its warm-up).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from smallset.config import option
from smallset.context import RunContext
from smallset.data import ImageDataset
from smallset.errors import SmallsetError
from smallset.method import Prepared
from smallset.models import seeded_model as _seeded
from smallset.prune.base import Selection, Selector, check_fraction, class_budgets


def seeded_model(ds: ImageDataset, ctx: RunContext, offset: int = 0) -> nn.Module:
    """A fresh ``ctx.model`` (with ``ctx.model_kwargs``) whose initial weights depend only on ``ctx.seed``
    and ``offset``; the global RNG state is left untouched. Placed on ``ctx.device``."""
    if len(ds) == 0:
        raise SmallsetError("The dataset is empty; there is nothing to score.")
    model = _seeded(ctx.model, ds.channels, ds.num_classes, ds.image_size, ctx.seed * 7919 + offset,
                         **(ctx.model_kwargs or {}))
    return model.to(ctx.device)


def sgd_epochs(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    generator: torch.Generator,
    lr: float,
    batch_size: int,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    nesterov: bool = False,
    on_batch: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> list[float]:
    """Train ``model`` in place with constant-lr SGD on normalised ``x``/``y`` (already on the model's device).

    One random permutation per epoch (from ``generator``), so every example is presented once per epoch.
    ``on_batch(epoch, idx, logits)`` sees each mini-batch's training forward pass (train mode, parameters
    before the update), which is what example forgetting records. Returns the mean loss of each epoch.
    """
    if batch_size < 1:
        raise SmallsetError("batch_size must be at least 1.")
    if lr <= 0:
        raise SmallsetError("lr must be positive.")
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                          nesterov=nesterov and momentum > 0)
    model.train()
    losses = []
    n = len(y)
    for ep in range(epochs):
        perm = torch.randperm(n, generator=generator).to(x.device)
        total = torch.zeros((), device=x.device)
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            logits = model(x[idx])
            if on_batch is not None:
                on_batch(ep, idx, logits.detach())
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
        losses.append(float(total) / n)
    return losses


def trained_feature_model(ds: ImageDataset, ctx: RunContext, epochs: int, lr: float = 0.01,
                          batch_size: int = 256, offset: int = 0) -> nn.Module:
    """``seeded_model`` trained for ``epochs`` epochs (0: left at its random initialisation) on the full
    dataset with SGD (momentum 0.9, weight decay 5e-4, constant ``lr``), without augmentation."""
    if epochs < 0:
        raise SmallsetError("The number of feature-model training epochs must be 0 or more.")
    model = seeded_model(ds, ctx, offset)
    if epochs > 0:
        x = ds.normalized().to(ctx.device)
        y = ds.labels.to(ctx.device)
        sgd_epochs(model, x, y, epochs, ctx.generator(offset + 1), lr=lr, batch_size=batch_size)
    model.eval()
    return model


@torch.no_grad()
def embed_features(model: nn.Module, ds: ImageDataset, device: torch.device | str, batch_size: int = 1024
                   ) -> torch.Tensor:
    """Penultimate features ``model.embed(x)`` of every example (eval mode, no grad, batched on ``device``);
    returns an N×D float32 tensor on the CPU."""
    if not hasattr(model, "embed"):
        raise SmallsetError("The feature model has no embed(); use a model from the registry.")
    model.eval()
    x = ds.normalized()
    out = []
    for start in range(0, len(ds), batch_size):
        out.append(model.embed(x[start:start + batch_size].to(device)).float().flatten(1).cpu())
    return torch.cat(out) if out else torch.empty(0, 0)


def _check_per_example(ds: ImageDataset, value, ndim: int, expected: str, what: str) -> torch.Tensor:
    """A tensor with one row per example and ``ndim`` dimensions, all finite; else one sentence."""
    if not isinstance(value, torch.Tensor) or value.ndim != ndim or value.shape[0] != len(ds):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise SmallsetError(f"Expected {expected}, got {shape}; pass the output of this method's prepare() or "
                            f"leave it unset.")
    if not torch.isfinite(value).all():
        raise SmallsetError(f"The {what} contain NaN or infinite values.")
    return value


def check_features(ds: ImageDataset, feats) -> torch.Tensor:
    """Validate scores given to herding/k-center: one feature row per example."""
    return _check_per_example(ds, feats, 2, f"an N×D feature tensor with N = {len(ds)} rows as scores",
                              "features")


def check_scores(ds: ImageDataset, scores) -> torch.Tensor:
    """Validate per-example scores: a finite 1-D tensor with one value per example."""
    return _check_per_example(ds, scores, 1, f"one score per example ({len(ds)})", "scores")


def ranked_keep(scores: torch.Tensor, k: int, higher_is_keep: bool, generator: torch.Generator) -> torch.Tensor:
    """Positions of the ``k`` best of ``scores`` (a 1-D tensor), ties broken by a seeded random draw.

    Vectorised: sort by a random key first, then stable-sort by score, so equal scores keep the random
    order. Same generator state, same result.
    """
    n = scores.shape[0]
    k = max(0, min(int(k), n))
    jitter_order = torch.randperm(n, generator=generator)
    s = scores.double().cpu()[jitter_order]
    order = torch.sort(s, descending=higher_is_keep, stable=True).indices
    return jitter_order[order[:k]]


def class_positions(ds: ImageDataset) -> list[torch.Tensor]:
    """The examples of each class in dataset order; the same as ``ds.class_indices()`` but with one stable
    sort instead of one full scan per class."""
    counts = ds.class_counts()
    order = torch.sort(ds.labels, stable=True).indices
    return list(torch.split(order, counts))


def top_per_class(ds: ImageDataset, scores: torch.Tensor, fraction: float, higher_is_keep: bool,
                  generator: torch.Generator) -> torch.Tensor:
    """Sorted indices of the best-scored round(fraction·n_c) examples of every class (budgets from
    :func:`smallset.prune.base.class_budgets`), seeded random tie-breaking (a random permutation, then a stable
    sort), vectorised."""
    budgets = class_budgets(ds.class_counts(), fraction)
    keep = [idx[ranked_keep(scores[idx], k, higher_is_keep, generator)]
            for idx, k in zip(class_positions(ds), budgets)]
    return torch.sort(torch.cat(keep)).values if keep else torch.empty(0, dtype=torch.long)


def keep_highest(ds: ImageDataset, scores, fraction: float, balance: bool,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(checked float scores, sorted kept indices) of a ranking selector that keeps the highest scores: per
    class round(fraction·n_c) (``balance``) or the global top round(fraction·N), seeded tie-breaking."""
    scores = check_scores(ds, scores).float().cpu()
    if balance:
        return scores, top_per_class(ds, scores, fraction, True, generator)
    k = int(math.floor(fraction * len(ds) + 0.5))
    return scores, torch.sort(ranked_keep(scores, k, True, generator)).values


def keep_highest_selection(ds: ImageDataset, scores, fraction: float, balance: bool, ctx: RunContext,
                           score_name: str) -> Selection:
    """The selection of a selector that keeps the highest scores (:func:`keep_highest`, tie-breaking from
    ``ctx.generator(17)``), weights 1, with the mean score, and the mean and lowest kept score, as info."""
    scores, indices = keep_highest(ds, scores, check_fraction(fraction), balance, ctx.generator(17))
    kept = scores[indices]
    info = {f"mean_{score_name}": float(scores.mean()),
            f"kept_mean_{score_name}": float(kept.mean()) if len(kept) else 0.0,
            f"kept_min_{score_name}": float(kept.min()) if len(kept) else 0.0}
    return Selection(indices, torch.ones(len(indices)), scores=scores, info=info)


# --- herding / k-center: features of ctx.model -----------------------------------------------------------
@dataclass
class FeatureConfig:
    feature_epochs: int = option(0, "0: features of the randomly initialised (seeded) model; N: train it N epochs "
                                    "on the data first", prepare=True, ge=0)
    feature_lr: float = option(0.01, "SGD learning rate when training the feature model (feature_epochs > 0)",
                               prepare=True, gt=0)


class FeatureSelector(Selector):
    """Base of the selectors that run a greedy loop on penultimate features (herding, k-center).

    ``prepare`` returns the N×D features ``ctx.model.embed(x)`` (not a ranking, hence ``higher_is_keep =
    None``); ``select`` runs the method's greedy order per class on them (:meth:`greedy_order`) and keeps the
    first round(fraction·n_c), so smaller fractions give nested subsets. The feature model is ``ctx.model``
    from ``ctx.seed``, random or trained ``feature_epochs`` epochs (docs/methods/herding.md,
    docs/methods/kcenter.md).
    """

    config_cls = FeatureConfig
    higher_is_keep = None  # prepare() returns features, not a ranking
    uses_model = True

    def prepare(self, ds: ImageDataset, ctx: RunContext) -> Prepared:
        model = trained_feature_model(ds, ctx, self.config.feature_epochs, lr=self.config.feature_lr)
        return Prepared(embed_features(model, ds, ctx.device))

    def greedy_order(self, feats: torch.Tensor, k: int) -> tuple[torch.Tensor, float]:
        """The first ``k`` positions of the greedy order within one class, and a quality value."""
        raise NotImplementedError

    quality_key: str = "quality"

    def select(self, ds: ImageDataset, fraction: float, ctx: RunContext, prepared=None) -> Selection:
        fraction = check_fraction(fraction)
        feats = check_features(ds, self.prepared_value(ds, ctx, prepared))
        budgets = class_budgets(ds.class_counts(), fraction)
        keep, quality = [], []
        for idx, k in zip(class_positions(ds), budgets):
            if k == 0:
                continue
            order, q = self.greedy_order(feats[idx].to(ctx.device, torch.float32), k)
            keep.append(idx[order.cpu()])
            quality.append(q)
        indices = torch.sort(torch.cat(keep)).values if keep else torch.empty(0, dtype=torch.long)
        info = {self.quality_key: float(sum(quality) / len(quality)) if quality else 0.0,
                "feature_dim": int(feats.shape[1])}
        return Selection(indices, torch.ones(len(indices)), info=info)
