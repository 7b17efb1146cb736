"""Fit and evaluate: the evaluation protocol every reduced set is judged by.

A fresh model is trained on a reduced set (per-example weights scale the loss: Σ wᵢ·ℓᵢ / Σ wᵢ per batch)
and tested on the source's full test split, over ``runs`` seeds: mean ± std of test accuracy, plus training
seconds. Presets: ``paper``/``paper-1000`` (the condensation papers' routine), ``quick`` (CPU-sized) and
``demo``.

Rationale and the papers' recipe: docs/methods/evaluation.md.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from smallset.data import ImageDataset
from smallset.errors import SmallsetError
from smallset.augment import get_augmentation
from smallset.interrupt import check_stop
from smallset.models import seeded_model
from smallset.registry import Registry



SCHEDULES = ("reference", "half", "cosine", "constant")


@dataclass(frozen=True)
class Protocol:
    """An evaluation recipe: how a fresh network is trained on a reduced set.

    ``schedule``: ``reference`` is the condensation papers' ``evaluate_synset`` exactly: E+1 passes over
    the data (loop index 0..E), the lr ×0.1 with a fresh optimiser after pass index E//2+1; ``half`` trains
    E passes and decays the same way after pass index E//2; ``cosine`` anneals to 0 per step;
    ``constant`` keeps the lr. ``augment`` names a training-time augmentation (``smallset.augment``),
    e.g. ``dsa:color_crop_cutout_flip_scale_rotate`` or ``dc:crop_scale_rotate``.
    """

    name: str
    epochs: int
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    min_steps: int = 0
    schedule: str = "half"
    augment: str = "none"
    nesterov: bool = False

    def epochs_for(self, n: int) -> int:
        """Passes over a training set of ``n`` examples."""
        steps_per_epoch = max(1, math.ceil(n / self.batch_size))
        epochs = max(self.epochs, math.ceil(self.min_steps / steps_per_epoch))
        return epochs + 1 if self.schedule == "reference" else epochs

    def decay_after(self, n: int) -> int | None:
        """The pass index after which the lr drops ×0.1 (step schedules), else None."""
        if self.schedule == "reference":  # E = the passes minus one, min_steps included
            return (self.epochs_for(n) - 1) // 2 + 1
        if self.schedule == "half":
            return self.epochs_for(n) // 2
        return None

    def describe(self) -> str:
        aug = "" if self.augment == "none" else f", augment {self.augment}"
        return (f"{self.name}: {self.epochs} epochs ({self.schedule} schedule), SGD lr {self.lr:g} momentum "
                f"{self.momentum:g} wd {self.weight_decay:g}, batch {self.batch_size}{aug}")

    def to_dict(self) -> dict:
        return asdict(self)


PROTOCOLS: Registry[Protocol] = Registry("protocol")
PROTOCOLS.register("paper")(Protocol("paper", epochs=300, schedule="reference"))
PROTOCOLS.register("paper-1000")(Protocol("paper-1000", epochs=1000, schedule="reference"))
# DeepCore's coreset evaluation (ResNet-18 on CIFAR in its paper): SGD 0.1, Nesterov momentum 0.9, wd 5e-4,
# batch 128, cosine annealing, 200 epochs.
PROTOCOLS.register("deepcore")(Protocol("deepcore", epochs=200, lr=0.1, batch_size=128, schedule="cosine",
                                        nesterov=True))
PROTOCOLS.register("quick")(Protocol("quick", epochs=20, batch_size=128, min_steps=200))
PROTOCOLS.register("demo")(Protocol("demo", epochs=8, batch_size=128, min_steps=200))


def get_protocol(name: str, augment: str | None = None, epochs: int | None = None) -> Protocol:
    p = PROTOCOLS.get(name)
    if augment is not None and augment != "none":
        get_augmentation(augment)  # validates the name and its argument
        p = replace(p, augment=augment)
    if epochs is not None:
        if epochs < 1:
            raise SmallsetError("eval_epochs must be at least 1.", option="eval_epochs")
        p = replace(p, epochs=epochs, min_steps=0)
    return p


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
    decay_after = protocol.decay_after(len(train))

    def make_opt(lr):
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=protocol.momentum,
                               weight_decay=protocol.weight_decay, nesterov=protocol.nesterov)

    opt = make_opt(protocol.lr)
    total_steps = epochs * max(1, math.ceil(len(train) / protocol.batch_size))
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
            if protocol.schedule == "cosine":
                for group in opt.param_groups:
                    group["lr"] = 0.5 * protocol.lr * (1 + math.cos(math.pi * step / total_steps))
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
        if decay_after is not None and ep == decay_after:
            opt = make_opt(protocol.lr * 0.1)
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
    """Train ``runs`` fresh models (seeds seed, seed+1, …) on ``train``; test accuracy on ``test``."""
    if isinstance(protocol, str):
        protocol = get_protocol(protocol)
    if runs < 1:
        raise SmallsetError("eval_runs must be at least 1.", option="eval_runs")
    if test is None:
        raise SmallsetError("This source has no test split to evaluate on; pass a source with one, or use no_eval.", option="no_eval")
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
