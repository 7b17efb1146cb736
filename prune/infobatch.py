"""InfoBatch (Qin et al., ICLR 2024, "InfoBatch: Lossless training speed up by unbiased dynamic data pruning").

A training-time method like CREST: it trains the model itself and, every epoch, randomly skips a share r of
the examples whose last recorded loss is below the mean loss, scaling the loss of the kept low-loss examples
by 1/(1 − r) so that the expected gradient is unchanged; the last (1 − δ) of the epochs train on all data.
The returned selection lists every example trained on, weighted by how many epochs it was trained on;
``info`` holds the trained model's test accuracy, the image passes and the per-epoch kept counts.

``fraction`` scales the epoch budget (docs/methods/infobatch.md#infobatch-budget): the run has
round(fraction × epochs) epochs on the same schedule compressed, so InfoBatch never spends more than
``fraction`` of the full run's image passes (CREST spends exactly that share of its SGD steps).

Rationale and the paper's recipe: docs/methods/infobatch.md.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from smallset.config import option
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
from smallset.train import accuracy

INITIAL_SCORE = 3.0  # the package's constant initial loss: nothing lies below the mean, epoch 0 is full


@dataclass
class InfoBatchConfig(TrainingSchedule):
    """InfoBatch's r and δ (paper defaults) on the training-time methods' shared recipe (CREST's fields and
    defaults, :class:`TrainingSchedule`), so that the two run on the same schedule
    (docs/methods/infobatch.md#infobatch-recipe)."""

    epochs: int = option(200, "epochs of the full run; the run has round(fraction × epochs) (as CREST's epochs)",
                         ge=1)
    momentum: float = option(0.0, "SGD momentum (as CREST; InfoBatch's CIFAR example: 0.9)", ge=0)
    weight_decay: float = option(1e-4, "SGD weight decay (as CREST; InfoBatch's CIFAR example: 5e-4)", ge=0)
    prune_ratio: float = option(0.5, "r: share of the below-mean-loss examples skipped each epoch; the kept ones "
                                     "get loss weight 1/(1-r) (paper: 0.5)", ge=0, lt=1)
    delta: float = option(0.875, "δ: prune while epoch+1 <= δ·epochs; the last (1-δ) of the epochs train on all "
                                 "data (paper: 0.875, i.e. the last eighth)", ge=0, le=1)
    test_every: int = option(0, "evaluate on the test split every this many epochs (0: only at the end)", ge=0)



# --- the pieces (docs/methods/infobatch.md#infobatch-algorithm) -------------------------------------------
def run_epochs(epochs: int, fraction: float) -> int:
    """Epochs of a run at ``fraction`` of the epoch budget: round(fraction·epochs), at least 1."""
    return max(1, int(math.floor(fraction * epochs + 0.5)))


def schedule_epoch(epoch: int, run: int, epochs: int) -> int:
    """The epoch of the full ``epochs``-epoch schedule whose LR epoch ``epoch`` of a ``run``-epoch run uses: the
    middle of the span it stands for, ⌊(e + ½)·epochs/run⌋ (= e when run = epochs)."""
    return int(math.floor((epoch + 0.5) * epochs / run))


def is_pruning_epoch(epoch: int, run: int, delta: float) -> bool:
    """The package's rule: prune while epoch + 1 ≤ δ·run; afterwards (the annealing) all data, weight 1."""
    return epoch + 1 <= delta * run + 1e-9


def anneal_epoch(run: int, delta: float) -> int:
    """The first epoch that trains on all data with unit weights after the pruning phase."""
    return min(run, max(0, int(math.floor(delta * run + 1e-9))))


def prune_plan(scores: torch.Tensor, prune_ratio: float, generator: torch.Generator
               ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One pruning epoch's (kept indices in training order, their loss weights, |W|).

    W = {i : score_i < mean(scores)} (strict; the mean over all N, stale scores included). A uniformly random
    ⌊(1 − r)|W|⌋ of W are kept with weight 1/(1 − r), the rest of W is skipped this epoch; every example with
    score ≥ mean is kept with weight 1. The kept list is shuffled. Random draws from the CPU ``generator``.
    """
    s = scores.detach().double().cpu()
    below = s < s.mean()
    cand = torch.nonzero(below, as_tuple=True)[0]
    well = torch.nonzero(~below, as_tuple=True)[0]
    keep_n = int(math.floor((1.0 - prune_ratio) * len(cand) + 1e-9))
    chosen = cand[torch.randperm(len(cand), generator=generator)[:keep_n]]
    kept = torch.cat([well, chosen])
    weights = torch.cat([torch.ones(len(well)), torch.full((len(chosen),), 1.0 / (1.0 - prune_ratio))])
    order = torch.randperm(len(kept), generator=generator)
    return kept[order], weights[order].float(), len(cand)


def full_plan(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A full epoch: all N in a random order, unit weights."""
    return torch.randperm(n, generator=generator), torch.ones(n), 0


def weighted_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(the backward loss mean_i(w_i·ℓ_i), the raw per-example losses ℓ_i) — the package's rescaled loss."""
    losses = F.cross_entropy(logits, targets, reduction="none")
    return (losses * weights).mean(), losses.detach()


class _InfoBatch:
    """The state of one InfoBatch run."""

    def __init__(self, cfg: InfoBatchConfig, ds: ImageDataset, fraction: float, ctx: RunContext):
        self.cfg, self.ds, self.ctx = cfg, ds, ctx
        self.device = torch.device(ctx.device)
        self.n = len(ds)
        self.run_epochs = run_epochs(cfg.epochs, fraction)
        self.x = ds.normalized().to(self.device)
        self.y = ds.labels.to(self.device)
        # Same initial weights as CREST and the benchmark's baselines for the same seed.
        self.model = seeded_model(ctx.model, ds.channels, ds.num_classes, ds.image_size, ctx.seed,
                                  **(ctx.model_kwargs or {})).to(self.device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
        self.milestones = parse_epochs(cfg.lr_milestones)
        self.crop, self.flip = augment_flags(cfg.augment, ds.channels)
        self.gen = ctx.generator(1)  # pruning draws and shuffles (CPU)
        self.aug_gen = ctx.generator(2)  # crop/flip draws (CPU)
        self.scores = torch.full((self.n,), INITIAL_SCORE, device=self.device)  # H: last recorded loss
        self.counts = torch.zeros(self.n, device=self.device)  # epochs each example was trained on (LR > 0)

    def lr(self, epoch: int) -> float:
        e = schedule_epoch(epoch, self.run_epochs, self.cfg.epochs)
        return warmup_multistep_lr(self.cfg.lr, e, self.cfg.warmup_epochs, self.milestones, self.cfg.lr_gamma)

    def plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        if is_pruning_epoch(epoch, self.run_epochs, self.cfg.delta) and self.cfg.prune_ratio > 0:
            return prune_plan(self.scores, self.cfg.prune_ratio, self.gen)
        return full_plan(self.n, self.gen)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch: the LR of the (compressed) schedule, the epoch's plan, weighted SGD steps over the kept
        list in batches of B (augmented inputs, train mode), H ← the raw per-example losses. At LR 0 (the
        warm-up's epoch 0) only the forward pass runs and records H. Returns the epoch's numbers."""
        cfg = self.cfg
        lr = self.lr(epoch)
        for g in self.opt.param_groups:
            g["lr"] = lr
        order, weights, n_cand = self.plan(epoch)
        order, weights = order.to(self.device), weights.to(self.device)
        tot_loss = torch.zeros((), device=self.device)
        tot_correct = torch.zeros((), device=self.device)
        steps = 0
        self.model.train()
        for s in range(0, len(order), cfg.batch_size):
            idx, w = order[s:s + cfg.batch_size], weights[s:s + cfg.batch_size]
            xb = crop_flip(self.x[idx], self.aug_gen, self.crop, self.flip)
            if lr > 0:
                out = self.model(xb)
                loss, losses = weighted_loss(out, self.y[idx], w)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
                self.counts[idx] += 1.0
            else:  # LR 0: no weight change; the forward pass still records the losses
                with torch.no_grad():
                    out = self.model(xb)
                    _, losses = weighted_loss(out, self.y[idx], w)
            self.scores[idx] = losses.float()  # H ← raw per-example loss, before weighting
            tot_loss += losses.sum()
            tot_correct += (out.detach().argmax(1) == self.y[idx]).sum()
            steps += 1
        if not torch.isfinite(tot_loss):
            raise SmallsetError("InfoBatch's training diverged (non-finite loss); lower lr.", option="lr")
        kept = max(1, len(order))
        return {"kept": float(len(order)), "candidates": float(n_cand), "lr": lr, "steps": float(steps),
                "loss": float(tot_loss) / kept, "accuracy": float(tot_correct) / kept}

    def run(self) -> dict:
        """All epochs; returns ``info`` (docs/methods/infobatch.md#infobatch-output)."""
        cfg = self.cfg
        curves: dict[str, list[float]] = {f"epoch_{k}": [] for k in ("kept", "candidates", "lr", "loss", "accuracy")}
        epoch_test: list[float] = []
        passes = forward_only = steps = 0.0
        bar = None
        if self.ctx.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.run_epochs, desc="infobatch", leave=False, unit="ep")
        self._sync()
        start = time.perf_counter()
        for epoch in range(self.run_epochs):
            ep = self.train_epoch(epoch)
            for k in ("kept", "candidates", "lr", "loss", "accuracy"):
                curves[f"epoch_{k}"].append(ep[k])
            steps += ep["steps"]
            if ep["lr"] > 0:
                passes += ep["kept"]
            else:
                forward_only += ep["kept"]
            if self.ctx.test is not None and cfg.test_every and (epoch + 1) % cfg.test_every == 0:
                pause = time.perf_counter()
                epoch_test.append(accuracy(self.model, self.ctx.test, self.device))
                start += time.perf_counter() - pause  # test evaluation is not training time
            if bar is not None:
                bar.update(1)
        self._sync()
        seconds = time.perf_counter() - start
        if bar is not None:
            bar.close()
        full = float(cfg.epochs * self.n)
        info = {
            "train_seconds": seconds,
            "epochs": float(self.run_epochs),
            "anneal_epoch": float(anneal_epoch(self.run_epochs, cfg.delta)),
            "steps": steps,
            "image_passes": passes,  # examples through forward + backward (epochs at LR > 0)
            "forward_only_passes": forward_only,  # examples of LR-0 epochs (forward only)
            "full_image_passes": full,  # epochs × N: the full-data run at fraction 1
            "pass_fraction": (passes + forward_only) / full,
            "saved_fraction": 1.0 - sum(curves["epoch_kept"]) / (self.run_epochs * self.n),
            **curves,
        }
        if epoch_test:
            info["epoch_test_accuracy"] = epoch_test
        acc = accuracy_on_test_split(self.model, self.ctx, self.ds)
        if acc is not None:
            info["test_accuracy"] = acc
        return info


@register_selector("infobatch")
class InfoBatchSelector(TrainingTimeSelector):
    """Train with unbiased dynamic data pruning (InfoBatch); return the examples trained on, weighted by use.

    ``info`` holds the trained model's test accuracy, the image passes and the per-epoch kept counts. See
    docs/methods/infobatch.md."""

    config_cls = InfoBatchConfig
    smoke = {"epochs": 8, "batch_size": 8, "warmup_epochs": 0, "lr_milestones": "", "delta": 0.75,
             "augment": "crop_flip"}

    def select(self, ds: ImageDataset, fraction: float, ctx: RunContext, prepared=None) -> Selection:
        fraction = check_fraction(fraction)
        self.check_config(self.config)  # a config built by hand
        if len(ds) == 0:
            raise SmallsetError("InfoBatch needs a non-empty training set.")
        run = _InfoBatch(self.config, ds, fraction, ctx)
        info = run.run()
        counts = run.counts.cpu()
        indices = torch.nonzero(counts > 0, as_tuple=True)[0]
        if len(indices) == 0:
            raise SmallsetError("No InfoBatch epoch ran at a positive learning rate; raise fraction or lower "
                                "warmup_epochs.", option="warmup_epochs")
        self.trained_model = run.model  # the trained network, for callers that want it
        return Selection(indices, counts[indices], info=info)
