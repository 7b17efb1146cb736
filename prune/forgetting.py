"""Example forgetting (Toneva et al., ICLR 2019), scored the DeepCore way (Guo et al., 2022).

Scoring trains a fresh model on the full data for a few epochs and counts, per example, the correct →
incorrect transitions between consecutive presentations (never-learned examples get the number of
presentations, or 0 the DeepCore way). Selection keeps the most forgotten examples, per class by default,
with seeded random tie-breaking; weights are 1.

Rationale and the paper's recipe: docs/methods/forgetting.md.
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
from smallset.prune._features import keep_highest, seeded_model, sgd_epochs


def forgetting_counts(correct_history: torch.Tensor, never_learned: str = "toneva") -> torch.Tensor:
    """Forgetting events per example from a T×N history of correctness flags (row k = k-th presentation).

    A forgetting event is a transition correct (1) at presentation k → incorrect (0) at presentation k+1
    (docs/methods/forgetting.md#forgetting-definitions); the first presentation can never be one. Examples
    that are never correct get T (the number of presentations, ``never_learned="toneva"``) or 0
    (``"deepcore"``). Returns int64 counts (N).
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
    score_epochs: int = field(default=10, metadata={"prepare": True, 
        "help": "epochs (= presentations per example) of the scoring training run (DeepCore paper: 10)"})
    score_runs: int = field(default=1, metadata={"prepare": True, 
        "help": "independently seeded scoring runs whose counts are summed (Toneva: 5, DeepCore: 1)"})
    never_learned: Literal["toneva", "deepcore"] = field(default="deepcore", metadata={"prepare": True,
        "help": "count for never-correct examples: deepcore = 0 (default, measured better: BENCHMARKS.md), "
                "toneva = number of presentations"})
    balance: bool = field(default=True, metadata={
        "help": "keep round(fraction*n_c) per class (DeepCore default); off: the global top fraction"})
    lr: float = field(default=0.1, metadata={"prepare": True, "help": "SGD learning rate of the scoring run (constant)"})
    momentum: float = field(default=0.9, metadata={"prepare": True, "help": "SGD momentum (Nesterov) of the scoring run"})
    weight_decay: float = field(default=5e-4, metadata={"prepare": True, "help": "SGD weight decay of the scoring run"})
    batch_size: int = field(default=128, metadata={"prepare": True, "help": "mini-batch size of the scoring run"})


@register_selector("forgetting")
class ForgettingSelector(Selector):
    """Keep the most forgotten examples (Toneva et al.; DeepCore variant,
    docs/methods/forgetting.md#forgetting-deepcore)."""

    config_cls = ForgettingConfig
    demo = {"score_epochs": 3}
    smoke = {"score_epochs": 2, "batch_size": 8}
    higher_is_keep = True  # most forgotten first
    uses_model = True

    def __init__(self, config: ForgettingConfig | None = None):
        super().__init__(config)
        self.score_info: dict = {}

    @classmethod
    def check_config(cls, c: ForgettingConfig) -> None:
        if c.score_epochs < 1:
            raise SmallsetError("score_epochs must be at least 1 (one presentation per example per epoch).",
                                option="score_epochs")
        if c.score_runs < 1:
            raise SmallsetError("score_runs must be at least 1.", option="score_runs")
        if c.batch_size < 1:
            raise SmallsetError("batch_size must be at least 1.", option="batch_size")
        if not c.lr > 0:
            raise SmallsetError(f"lr must be positive; got {c.lr}.", option="lr")

    def prepare(self, ds: ImageDataset, ctx: RunContext) -> torch.Tensor:
        """Forgetting counts (float32, one per example), summed over ``score_runs`` runs."""
        self.check_config(self.config)
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
                raise SmallsetError("The scoring run diverged (NaN weights); lower lr.", option="lr")
            total += forgetting_counts(history.cpu(), c.never_learned)
            if run == 0:
                train_acc = history.float().mean(1).cpu().tolist()
        hist = total.float()
        self.score_info = {
            "score_train_accuracy": train_acc,  # per-epoch accuracy of the recorded forward passes (run 0)
        }
        return hist

    def select(self, ds: ImageDataset, fraction: float, ctx: RunContext, prepared=None) -> Selection:
        fraction = check_fraction(fraction)
        info: dict = {}
        scores = prepared
        if scores is None:
            scores = self.prepare(ds, ctx)
            info.update(self.score_info)
        scores, indices = keep_highest(ds, scores, fraction, self.config.balance, ctx.generator(17))
        kept = scores[indices]
        info.update({
            "unforgettable_fraction": float((scores == 0).float().mean()),
            "mean_forgetting": float(scores.mean()),
            "kept_mean_forgetting": float(kept.mean()) if len(kept) else 0.0,
            "kept_min_forgetting": float(kept.min()) if len(kept) else 0.0,
        })
        return Selection(indices, torch.ones(len(indices)), scores=scores, info=info)
