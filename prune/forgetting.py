"""Example forgetting (Toneva et al., ICLR 2019), scored the DeepCore way (Guo et al., 2022).

Scoring trains a fresh model on the full data for a few epochs and counts, per example, the correct →
incorrect transitions between consecutive presentations (never-learned examples get the number of
presentations, or 0 the DeepCore way). Selection keeps the most forgotten examples, per class by default,
with seeded random tie-breaking; weights are 1.

Rationale and the paper's recipe: docs/methods/forgetting.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from smallset.config import option
from smallset.context import RunContext
from smallset.data import ImageDataset
from smallset.errors import SmallsetError
from smallset.method import Prepared, PreparesInUnits
from smallset.prune._features import keep_highest_selection, seeded_model, sgd_epochs
from smallset.prune.base import Selection, Selector, register_selector


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
    score_epochs: int = option(10, "epochs (= presentations per example) of the scoring training run (DeepCore "
                                   "paper: 10)", prepare=True, ge=1)
    score_runs: int = option(1, "independently seeded scoring runs whose counts are summed (Toneva: 5, DeepCore: 1)",
                             prepare=True, ge=1)
    never_learned: Literal["toneva", "deepcore"] = option(
        "deepcore", "count for never-correct examples: deepcore = 0 (default, measured better: BENCHMARKS.md), "
                    "toneva = number of presentations", prepare=True)
    balance: bool = option(True, "keep round(fraction*n_c) per class (DeepCore default); off: the global top fraction")
    lr: float = option(0.1, "SGD learning rate of the scoring run (constant)", prepare=True, gt=0)
    momentum: float = option(0.9, "SGD momentum (Nesterov) of the scoring run", prepare=True, ge=0)
    weight_decay: float = option(5e-4, "SGD weight decay of the scoring run", prepare=True, ge=0)
    batch_size: int = option(128, "mini-batch size of the scoring run", prepare=True, ge=1)


@register_selector("forgetting")
class ForgettingSelector(PreparesInUnits, Selector):
    """Keep the most forgotten examples (Toneva et al.; DeepCore variant,
    docs/methods/forgetting.md#forgetting-deepcore)."""

    config_cls = ForgettingConfig
    demo = {"score_epochs": 3}
    smoke = {"score_epochs": 2, "batch_size": 8, "score_runs": 2}
    higher_is_keep = True  # most forgotten first
    uses_model = True

    def unit_count(self) -> int:
        return self.config.score_runs

    def run_unit(self, ds: ImageDataset, ctx: RunContext, index: int) -> tuple[torch.Tensor, list[float]]:
        """Scoring run ``index``: its forgetting counts (int64, one per example) and the per-epoch accuracy of
        its recorded forward passes."""
        self.check_config(self.config)
        c = self.config
        x = ds.normalized().to(ctx.device)
        y = ds.labels.to(ctx.device)
        model = seeded_model(ds, ctx, offset=1000 * index)
        history = torch.zeros(c.score_epochs, len(ds), dtype=torch.bool, device=ctx.device)

        def record(ep, idx, logits):
            history[ep, idx] = logits.argmax(1) == y[idx]

        sgd_epochs(model, x, y, c.score_epochs, ctx.generator(1000 * index + 1), lr=c.lr,
                   batch_size=c.batch_size, momentum=c.momentum, weight_decay=c.weight_decay,
                   nesterov=True, on_batch=record)
        if not torch.isfinite(next(model.parameters())).all():
            raise SmallsetError("The scoring run diverged (NaN weights); lower lr.", option="lr")
        return forgetting_counts(history.cpu(), c.never_learned), history.float().mean(1).cpu().tolist()

    def combine(self, ds: ImageDataset, ctx: RunContext, units: list) -> Prepared:
        """Forgetting counts summed over the runs (float32, one per example); run 0's per-epoch accuracy."""
        total = torch.zeros(len(ds), dtype=torch.int64)
        for counts, _ in units:
            total += counts
        # per-epoch accuracy of the recorded forward passes (run 0)
        return Prepared(total.float(), {"score_train_accuracy": units[0][1]}, tuple(units))

    def select(self, ds: ImageDataset, fraction: float, ctx: RunContext, prepared=None) -> Selection:
        sel = keep_highest_selection(ds, self.prepared_value(ds, ctx, prepared), fraction, self.config.balance,
                                     ctx, "forgetting")
        sel.info["unforgettable_fraction"] = float((sel.scores == 0).float().mean())
        return sel
