"""Example forgetting (Toneva et al., ICLR 2019), scored the DeepCore way (pruning-methods.md §2).

Score (:meth:`ForgettingSelector.score`, spec §2.1, §2.2, §2.6): train a fresh ``ctx.model`` (initialised
from ``ctx.seed``) on the full training set for ``score_epochs`` epochs with SGD (lr 0.1, momentum 0.9,
Nesterov, weight decay 5e-4, constant lr, batch 128, no augmentation: DeepCore's pre-training, §2.6). At
each presentation, the training forward pass itself (train mode, parameters before that batch's update)
records whether the example is classified correctly. An example's count is the number of 1→0 transitions
between consecutive presentations (:func:`forgetting_counts`). Examples never classified correctly get the
number of presentations (Toneva, default) or 0 (DeepCore), option ``never_learned``. With ``score_runs``
> 1 the counts of independently seeded runs are summed (Toneva's recipe uses 5 runs; DeepCore 1).

Selection (:meth:`ForgettingSelector.select`, spec §2.6): keep the MOST forgotten examples
(``higher_is_keep = True``), per class round(fraction·n_c) (``balance=True``, default) or the global top
round(fraction·N). Ties, which are the rule after 10 epochs, are broken by a seeded random draw instead of
DeepCore's arbitrary unstable argsort (documented deviation, as §2.6 recommends). Weights are 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from smallset.context import RunContext
from smallset.data import ImageDataset
from smallset.errors import SmallsetError
from smallset.prune.base import Selection, Selector, check_fraction, register_selector
from smallset.prune.features import check_scores, ranked_keep, seeded_model, sgd_epochs, top_per_class


def forgetting_counts(correct_history: torch.Tensor, never_learned: str = "toneva") -> torch.Tensor:
    """Forgetting events per example from a T×N history of correctness flags (row k = k-th presentation).

    A forgetting event is a transition correct (1) at presentation k → incorrect (0) at presentation k+1
    (spec §2.1); the first presentation can never be one. Examples that are never correct get T (the
    number of presentations, ``never_learned="toneva"``) or 0 (``"deepcore"``). Returns int64 counts (N).
    """
    h = torch.as_tensor(correct_history).bool()
    if h.ndim != 2:
        raise SmallsetError("correct_history must be a T×N tensor (presentations × examples).")
    if never_learned not in ("toneva", "deepcore"):
        raise SmallsetError(f"never_learned must be 'toneva' or 'deepcore', not {never_learned!r}.")
    t = h.shape[0]
    counts = (h[:-1] & ~h[1:]).sum(0, dtype=torch.int64) if t > 1 else torch.zeros(h.shape[1], dtype=torch.int64)
    if never_learned == "toneva":
        counts = torch.where(h.any(0), counts, torch.full_like(counts, t))
    return counts


@dataclass
class ForgettingConfig:
    score_epochs: int = field(default=10, metadata={
        "help": "epochs (= presentations per example) of the scoring training run (DeepCore paper: 10)"})
    score_runs: int = field(default=1, metadata={
        "help": "independently seeded scoring runs whose counts are summed (Toneva: 5, DeepCore: 1)"})
    never_learned: Literal["toneva", "deepcore"] = field(default="toneva", metadata={
        "help": "count for never-correct examples: toneva = number of presentations, deepcore = 0"})
    balance: bool = field(default=True, metadata={
        "help": "keep round(fraction*n_c) per class (DeepCore default); off: the global top fraction"})
    lr: float = field(default=0.1, metadata={"help": "SGD learning rate of the scoring run (constant)"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum (Nesterov) of the scoring run"})
    weight_decay: float = field(default=5e-4, metadata={"help": "SGD weight decay of the scoring run"})
    batch_size: int = field(default=128, metadata={"help": "mini-batch size of the scoring run"})


@register_selector("forgetting")
class ForgettingSelector(Selector):
    """Keep the most forgotten examples (Toneva et al.; DeepCore variant, spec §2.6)."""

    config_cls = ForgettingConfig
    higher_is_keep = True  # most forgotten first
    uses_model = True
    score_fields = ("score_epochs", "score_runs", "never_learned", "lr", "momentum", "weight_decay", "batch_size")

    def __init__(self, config: ForgettingConfig | None = None):
        super().__init__(config)
        self.score_info: dict = {}

    def _check_config(self) -> None:
        c = self.config
        if c.score_epochs < 1:
            raise SmallsetError("score_epochs must be at least 1 (one presentation per example per epoch).")
        if c.score_runs < 1:
            raise SmallsetError("score_runs must be at least 1.")
        if c.batch_size < 1 or c.lr <= 0:
            raise SmallsetError("batch_size must be at least 1 and lr positive.")

    def score(self, ds: ImageDataset, ctx: RunContext) -> torch.Tensor:
        """Forgetting counts (float32, one per example), summed over ``score_runs`` runs."""
        self._check_config()
        c = self.config
        x = ds.normalized().to(ctx.device)
        y = ds.labels.to(ctx.device)
        total = torch.zeros(len(ds), dtype=torch.int64)
        train_acc: list[float] = []
        for run in range(c.score_runs):
            model = seeded_model(ds, ctx, offset=1000 * run)
            history = torch.zeros(c.score_epochs, len(ds), dtype=torch.bool, device=ctx.device)

            def record(ep, idx, logits, history=history):
                history[ep, idx] = logits.argmax(1) == y[idx]

            sgd_epochs(model, x, y, c.score_epochs, ctx.generator(1000 * run + 1), lr=c.lr,
                       batch_size=c.batch_size, momentum=c.momentum, weight_decay=c.weight_decay,
                       nesterov=True, on_batch=record)
            if not torch.isfinite(next(model.parameters())).all():
                raise SmallsetError("The scoring run diverged (NaN weights); lower --lr.")
            total += forgetting_counts(history.cpu(), c.never_learned)
            if run == 0:
                train_acc = history.float().mean(1).cpu().tolist()
        hist = total.float()
        self.score_info = {
            "score_train_accuracy": train_acc,  # per-epoch accuracy of the recorded forward passes (run 0)
        }
        return hist

    def select(self, ds: ImageDataset, fraction: float, ctx: RunContext, scores=None) -> Selection:
        fraction = check_fraction(fraction)
        info: dict = {}
        if scores is None:
            scores = self.score(ds, ctx)
            info.update(self.score_info)
        scores = check_scores(ds, scores).float().cpu()
        gen = ctx.generator(17)
        if self.config.balance:
            indices = top_per_class(ds, scores, fraction, True, gen)
        else:
            k = int(math.floor(fraction * len(ds) + 0.5))
            indices = torch.sort(ranked_keep(scores, k, True, gen)).values
        kept = scores[indices]
        info.update({
            "unforgettable_fraction": float((scores == 0).float().mean()),
            "mean_forgetting": float(scores.mean()),
            "kept_mean_forgetting": float(kept.mean()) if len(kept) else 0.0,
            "kept_min_forgetting": float(kept.min()) if len(kept) else 0.0,
        })
        return Selection(indices, torch.ones(len(indices)), scores=scores, info=info)
