"""Fit and evaluate: the evaluation protocol every reduced set is judged by.

A fresh model is trained on a reduced set (per-example weights scale the loss: Σ wᵢ·ℓᵢ / Σ wᵢ per batch)
and tested on the source's full test split, over ``runs`` seeds: mean ± std of test accuracy, plus training
seconds. The presets, schedules and optimisers are registries in :mod:`smallset.protocols` (``paper``/
``paper-1000``: the condensation papers' routine, ``deepcore``, ``quick`` (CPU-sized) and ``demo``), re-exported
here.

Rationale and the papers' recipe: docs/methods/evaluation.md.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from smallset.augment import get_augmentation
from smallset.data import ImageDataset
from smallset.errors import SmallsetError
from smallset.interrupt import check_stop
from smallset.models import seeded_model
from smallset.protocols import OPTIMIZERS, PROTOCOLS, SCHEDULES, Protocol, get_protocol  # noqa: F401 (re-exported)


@dataclass
class EvalResult:
    protocol: str
    model: str
    accuracies: list[float]
    train_seconds: list[float]
    epochs: int
    extra: dict = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return float(torch.tensor(self.accuracies).mean()) if self.accuracies else float("nan")

    @property
    def std(self) -> float:
        return float(torch.tensor(self.accuracies).std(unbiased=False)) if len(self.accuracies) > 1 else 0.0

    @property
    def total_train_seconds(self) -> float:
        return float(sum(self.train_seconds))

    def summary(self) -> str:
        return f"{100 * self.mean:.2f} ± {100 * self.std:.2f}% over {len(self.accuracies)} runs"


def weighted_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Σ wᵢ·CEᵢ / Σ wᵢ (plain mean when ``weights`` is None)."""
    if weights is None:
        return F.cross_entropy(logits, targets)
    losses = F.cross_entropy(logits, targets, reduction="none")
    return (losses * weights).sum() / weights.sum().clamp_min(1e-12)


def fit(
    model: nn.Module,
    train: ImageDataset,
    protocol: Protocol,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
    on_epoch: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``model`` in place on ``train`` with ``protocol``; returns the mean loss of each epoch."""
    device = torch.device(device)
    x = train.normalized().to(device)
    y = train.labels.to(device)
    w = train.weights.to(device) if train.weights is not None else None
    if len(train) == 0:
        raise SmallsetError("Cannot train on an empty dataset.")
    augment = get_augmentation(protocol.augment)
    gen = torch.Generator().manual_seed(seed)
    aug_gen = torch.Generator().manual_seed(seed + 1) if augment else None  # CPU: same draws on any device
    epochs = protocol.epochs_for(len(train))
    total_steps = epochs * protocol.steps_per_epoch(len(train))
    schedule, optimizer = protocol.schedule_rule(), protocol.optimizer_rule()
    restart_after = schedule.decay_after(epochs)
    opt = optimizer.make(model.parameters(), protocol, schedule.lr(protocol.lr, 0, total_steps, 0, epochs))
    step = 0
    losses = []
    iterator = range(epochs)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(iterator, desc="train", leave=False, unit="ep", mininterval=0.5, disable=None)
        iterator = bar
    model.train()
    for ep in iterator:
        perm = torch.randperm(len(train), generator=gen).to(device)
        total, count = 0.0, 0
        for start in range(0, len(train), protocol.batch_size):
            check_stop()
            idx = perm[start:start + protocol.batch_size]
            xb = x[idx]
            if augment is not None:
                xb = augment(xb, aug_gen)
            loss = weighted_cross_entropy(model(xb), y[idx], None if w is None else w[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for group in opt.param_groups:
                group["lr"] = schedule.lr(protocol.lr, step, total_steps, ep, epochs)
            opt.step()
            step += 1
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        losses.append(total / count)
        if not math.isfinite(losses[-1]):
            if bar is not None:
                bar.close()
            extreme = float(x.abs().max()) if len(x) else 0.0
            raise SmallsetError(
                f"The evaluation training diverged: its loss is {losses[-1]} in epoch {ep + 1} of {epochs} "
                f"({protocol.name} recipe, lr {protocol.lr:g}); the training set's largest normalised pixel is "
                f"{extreme:.3g}. Check the reduced set (a diverged method writes extreme pixels) or pick another "
                f"protocol.", option="protocol")
        if bar is not None:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if on_epoch is not None:
            on_epoch(ep, losses[-1])
        if ep == restart_after:  # a fresh optimiser (momentum reset) at the next step's lr
            opt = optimizer.make(model.parameters(), protocol,
                                 schedule.lr(protocol.lr, step, total_steps, ep + 1, epochs))
    return losses


@torch.no_grad()
def accuracy(model: nn.Module, test: ImageDataset, device: torch.device | str = "cpu", batch_size: int = 1024) -> float:
    model.eval()
    device = torch.device(device)
    x = test.normalized()
    correct = 0
    for start in range(0, len(test), batch_size):
        xb = x[start:start + batch_size].to(device)
        pred = model(xb).argmax(1).cpu()
        correct += int((pred == test.labels[start:start + batch_size]).sum())
    model.train()
    return correct / max(1, len(test))


def evaluate(
    train: ImageDataset,
    test: ImageDataset,
    model_name: str = "convnet",
    protocol: Protocol | str = "quick",
    runs: int = 3,
    seed: int = 0,
    device: torch.device | str = "cpu",
    model_kwargs: dict | None = None,
    progress: bool = False,
) -> EvalResult:
    """Train ``runs`` fresh models on ``train`` (run r seeds its weights and batch order with
    ``seed * 1000 + r``); test accuracy on ``test``."""
    if isinstance(protocol, str):
        protocol = get_protocol(protocol)
    if runs < 1:
        raise SmallsetError("eval_runs must be at least 1.", option="eval_runs")
    if test is None:
        raise SmallsetError("This source has no test split to evaluate on; pass a source with one, or use no_eval.",
                            option="no_eval")
    if (train.channels, train.image_size) != (test.channels, test.image_size):
        raise SmallsetError("The reduced set and the test split have different image shapes.")
    accs, secs = [], []
    for r in range(runs):
        run_seed = seed * 1000 + r
        model = seeded_model(model_name, train.channels, train.num_classes, train.image_size, run_seed,
                             **(model_kwargs or {})).to(device)
        t0 = time.perf_counter()
        fit(model, train, protocol, seed=run_seed, device=device, progress=progress)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        secs.append(time.perf_counter() - t0)
        accs.append(accuracy(model, test, device))
    return EvalResult(protocol.name, model_name, accs, secs, protocol.epochs_for(len(train)),
                      extra={"recipe": protocol.to_dict(), "n_examples": len(train)})
