"""CREST: coresets for stochastic gradient descent (Yang, Kang, Mirzasoleiman, ICML 2023).

Trains the model on ``fraction`` of the full run's SGD steps and decides, while training, which examples
the steps are spent on: weighted mini-batch coresets picked by facility location from random subsets,
re-selected when a quadratic model of the loss stops predicting it, with learned examples dropped from the
pool. The returned selection lists every example trained on, weighted by how often it was used.

Rationale and the paper's recipe: docs/methods/crest.md.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

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
from smallset.prune.submodular import euclidean_similarity, facility_location_greedy
from smallset.train import accuracy

EVAL_CHUNK = 1024  # rows per forward pass when scoring random subsets


@dataclass
class CrestConfig(TrainingSchedule):
    """CREST hyperparameters on the training-time methods' shared schedule (:class:`TrainingSchedule`, whose
    defaults are CREST's); defaults are the reference release's (docs/methods/crest.md#crest-defaults)."""

    batch_size: int = option(128, "SGD mini-batch size B (also sets ceil(B/C) per class per coreset).", ge=1)
    random_subset_size: float = option(0.01, "Random subset size r as a fraction of N (ceil(r·N/C) per class).",
                                       gt=0, le=1)
    num_minibatch_coreset: int = option(5, "Coresets P at the first selection.", ge=1)
    check_interval: int = option(1, "Steps between quadratic-model checks at first.", ge=1)
    interval_mul: float = option(1.0, "check_interval = ceil(kappa0 / kappa × interval_mul).", gt=0)
    batch_num_mul: float = option(5.0, "P = min(check_interval × batch_num_mul, steps per epoch).", gt=0)
    check_thresh_factor: float = option(0.1, "tau: re-select when |L_true − L_approx| > tau × L_true.", ge=0)
    consistent_check: bool = option(
        False, "Take the check's L0 as the eval-mode loss on the random subsets at selection time, so that both "
               "sides of the check are the same loss (a deviation suggested by the spec; see docs/methods/crest.md).")
    check_subsets: int = option(
        0, "Random subsets the check computes L_true on: 0 = all P (reference); k = the first k only, a cheaper "
           "check for CPUs (a deviation, see docs/methods/crest.md).", ge=0)
    approx_moment: bool = option(
        True, "Use the Adahessian EMA sqrt(s) as the Hessian diagonal (else the raw Hutchinson mean).")
    drop_learned: bool = option(True, "Drop learned examples from the pool (paper; off in the release).")
    watch_interval: int = option(5, "Loss-record slots (epochs) for the learned test.", ge=1)
    drop_interval: int = option(20, "Try dropping learned examples every this many epochs.", ge=1)
    drop_thresh: float = option(0.1, "An example is learned when every recorded loss is at most this.")
    min_pool_fraction: float = option(
        0.8, "Drop only while the pool keeps more than this fraction of N (reference: 40000 of 50000).", ge=0, le=1)
    test_every: int = option(0, "Evaluate on the test split every this many epochs (0: only at the end).", ge=0)
    augment: Literal["none", "auto", "crop_flip", "crop"] = option(
        "none", "Training-batch augmentation: reflect-pad-4 random crop and flip (auto: flip only colour images); "
                "selection and checks use clean inputs (docs/methods/crest.md).")


def lr_for_epoch(cfg: CrestConfig, epoch: int) -> float:
    """The reference's warm-up + multi-step schedule, one value per CREST epoch: lr·e/warmup up to the warm-up,
    then one ``lr_gamma`` decay per milestone counted from its end (docs/methods/crest.md#crest-optimiser-schedule)."""
    return warmup_multistep_lr(cfg.lr, epoch, cfg.warmup_epochs, parse_epochs(cfg.lr_milestones), cfg.lr_gamma)


def budget_steps(n: int, fraction: float, cfg: CrestConfig) -> tuple[int, int]:
    """(steps per CREST epoch, total SGD steps) for N examples at ``fraction`` of the full run
    (docs/methods/crest.md#crest-budget)."""
    n_sub = math.floor(n * fraction)
    if n_sub < 1:
        raise SmallsetError(
            f"fraction {fraction} of {n} examples is less than one example; use a larger fraction.", option="fraction")
    spe = math.ceil(n_sub / cfg.batch_size)
    return spe, cfg.epochs * spe



def _flat(tensors, params) -> torch.Tensor:
    return torch.cat([(t if t is not None else torch.zeros_like(p)).reshape(-1) for t, p in zip(tensors, params)])


class _Crest:
    """The state of one CREST run (kept out of the Selector so that the selector stays stateless)."""

    def __init__(self, cfg: CrestConfig, ds: ImageDataset, fraction: float, ctx: RunContext):
        self.cfg, self.ds, self.ctx = cfg, ds, ctx
        self.device = torch.device(ctx.device)
        self.n, self.C = len(ds), ds.num_classes
        self.spe, self.total = budget_steps(self.n, fraction, cfg)
        self.k_r = math.ceil(cfg.random_subset_size * self.n / self.C)  # random-subset size per class
        self.k_c = math.ceil(cfg.batch_size / self.C)  # coreset size per class
        self.x = ds.normalized().to(self.device)
        self.y = ds.labels.to(self.device)
        model = seeded_model(ctx.model, ds.channels, self.C, ds.image_size, ctx.seed, **(ctx.model_kwargs or {}))
        self.model = model.to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.numel = sum(p.numel() for p in self.params)
        self.opt = torch.optim.SGD(self.params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.gen = ctx.generator(1)  # random subsets, shuffles (CPU)
        self.aug_flags = augment_flags(cfg.augment, ds.channels)  # (crop, flip) of the training batches
        self.aug_gen = ctx.generator(3)  # their draws (CPU)
        self.hgen = torch.Generator(device=self.device).manual_seed(ctx.seed * 7919 + 2)  # Hutchinson vectors
        self.pools = [idx.clone() for idx in ds.class_indices()]
        self.record = torch.full((cfg.watch_interval, self.n), -1.0, device=self.device)
        self.counts = torch.zeros(self.n, dtype=torch.float32, device=self.device)
        # Adahessian EMAs, persistent over the run (docs/methods/crest.md#crest-quadratic-model).
        self.m = torch.zeros(self.numel, device=self.device)
        self.s = torch.zeros(self.numel, device=self.device)
        self.k_ema = 0
        self.P = cfg.num_minibatch_coreset
        self.ci = cfg.check_interval
        self.kappa0: float | None = None
        self.selections = 0
        self.dropped = 0
        self.selection_seconds = 0.0
        self.check_seconds = 0.0
        self.check_errors: list[float] = []
        self.kappas: list[float] = []

    # --- helpers ----------------------------------------------------------------------------
    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def _eval_logits(self, idx: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        outs = [self.model(self.x[idx[s:s + EVAL_CHUNK]]) for s in range(0, len(idx), EVAL_CHUNK)]
        self.model.train()
        return torch.cat(outs) if outs else torch.empty(0, self.C, device=self.device)

    def _random_subsets(self, P: int) -> torch.Tensor:
        """(P·C, k) dataset indices, −1 padded: P class-balanced uniform draws from the pool
        (docs/methods/crest.md#crest-random-subsets)."""
        k = max(1, min(self.k_r, max(len(p) for p in self.pools)))
        out = torch.full((P * self.C, k), -1, dtype=torch.long)
        for p in range(P):
            for c, pool in enumerate(self.pools):
                take = min(self.k_r, len(pool))
                if take:
                    out[p * self.C + c, :take] = pool[torch.randperm(len(pool), generator=self.gen)[:take]]
        return out

    def _class_budgets(self, members: torch.Tensor, P: int) -> torch.Tensor:
        """ceil(B/C) per class, with the minority rule's shortfall handed to classes with spare members."""
        avail = (members >= 0).sum(1).view(P, self.C)
        budgets = torch.clamp(avail, max=self.k_c)
        for p in range(P):
            short = int(self.k_c * int((avail[p] > 0).sum()) - budgets[p].sum())
            while short > 0:
                spare = (avail[p] - budgets[p]) > 0
                if not bool(spare.any()):
                    break
                for c in torch.nonzero(spare).flatten().tolist():
                    if short == 0:
                        break
                    budgets[p, c] += 1
                    short -= 1
        return budgets.view(-1)

    # --- selection (docs/methods/crest.md#crest-random-subsets to #crest-drop-learned) -----------
    def select(self, epoch: int) -> None:
        cfg = self.cfg
        self._sync()
        t0 = time.perf_counter()
        P = int(self.P)
        members = self._random_subsets(P)  # CPU
        valid = members >= 0
        flat = members[valid].to(self.device)
        uniq, inverse, counts = torch.unique(flat, return_inverse=True, return_counts=True)
        logits = self._eval_logits(uniq)
        probs = torch.softmax(logits.float(), 1)
        # Gradient proxies softmax(z) − onehot(y) (docs/methods/crest.md#crest-gradient-proxies).
        proxies_u = probs - F.one_hot(self.y[uniq], self.C).float()
        losses_u = F.cross_entropy(logits.float(), self.y[uniq], reduction="none")
        if cfg.check_subsets and cfg.check_subsets < P:  # the check's R: the first k random subsets only
            part = members[: cfg.check_subsets * self.C]
            self.R_uniq, rc = torch.unique(part[part >= 0].to(self.device), return_counts=True)
            self.R_counts = rc.float()
        else:
            self.R_uniq, self.R_counts = uniq, counts.float()

        if cfg.drop_learned:
            self.record[epoch % cfg.watch_interval, uniq] = losses_u
            if (epoch + 1) % cfg.drop_interval == 0:
                self._drop_learned()

        # Per-class facility location on every (subset, class) group at once
        # (docs/methods/crest.md#crest-coreset-selection).
        G, k = members.shape
        feats = torch.zeros(G, k, self.C, device=self.device)
        vdev = valid.to(self.device)
        feats[vdev] = proxies_u[inverse]
        sim = euclidean_similarity(feats, scale=float(self.C))
        budgets = self._class_budgets(members, P).to(self.device)
        sel, w = facility_location_greedy(sim, budgets, vdev)
        mdev = members.to(self.device)
        ok = sel >= 0
        idx = mdev.gather(1, sel.clamp_min(0))[ok]
        w = w[ok].clamp_min(1.0)  # zero weights are set to 1 in the reference (unreachable since s > 0)
        self.U = idx
        # Mean weight 1 over the union (docs/methods/crest.md#crest-training-on-coresets).
        self.Uw = w / w.sum() * len(w)
        self.counts.index_add_(0, idx, torch.ones_like(w))
        self._perm, self._pos = None, 0

        kappa = self._quadratic_model()
        if cfg.consistent_check:  # L0 := L_true at t0, on the check's own R (eval mode, unweighted)
            keep = torch.isin(uniq, self.R_uniq)
            self.L0 = float((losses_u[keep] * self.R_counts).sum() / self.R_counts.sum())
        self.kappas.append(kappa)
        if self.kappa0 is None:
            self.kappa0 = kappa
        else:  # docs/methods/crest.md#crest-adaptive-interval; P is an integer (a float P crashes range(P))
            ratio = self.kappa0 / kappa if kappa > 0 else float(self.total)
            self.ci = max(1, min(self.total, math.ceil(ratio * cfg.interval_mul)))
            self.P = max(1, int(min(self.ci * cfg.batch_num_mul, self.spe)))
        self.selections += 1
        self._sync()
        self.selection_seconds += time.perf_counter() - t0

    def _drop_learned(self) -> None:
        rec = self.record
        seen = (rec >= 0).any(0)
        keep = (rec > self.cfg.drop_thresh).any(0) | ~seen
        keep = keep.cpu()
        new = []
        for pool in self.pools:
            kept = pool[keep[pool]]
            new.append(kept if len(kept) > self.k_r else pool)
        size = sum(len(p) for p in new)
        if size > self.cfg.min_pool_fraction * self.n:
            self.dropped += sum(len(p) for p in self.pools) - size
            self.pools = new

    def _quadratic_model(self) -> float:
        """One train-mode pass over U: g₀, H₀, L₀ and κ from the persistent Adahessian EMAs
        (docs/methods/crest.md#crest-quadratic-model)."""
        B = self.cfg.batch_size
        g0 = torch.zeros(self.numel, device=self.device)
        h0 = torch.zeros(self.numel, device=self.device)
        l0, kappa, total = 0.0, 0.0, 0
        nb = 0
        for start in range(0, len(self.U), B):
            idx, w = self.U[start:start + B], self.Uw[start:start + B]
            loss = (F.cross_entropy(self.model(self.x[idx]), self.y[idx], reduction="none") * w).mean()
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
            v = torch.randint(0, 2, (self.numel,), generator=self.hgen, device=self.device).float().mul_(2).sub_(1)
            pairs = [(g, p) for g, p in zip(grads, self.params) if g is not None and g.requires_grad]
            vs = list(torch.split(v, [p.numel() for p in self.params]))
            vmap = {id(p): vi.view_as(p) for p, vi in zip(self.params, vs)}
            hv_parts = torch.autograd.grad([g for g, _ in pairs], [p for _, p in pairs],
                                           grad_outputs=[vmap[id(p)] for _, p in pairs], allow_unused=True)
            hv = dict(zip([id(p) for _, p in pairs], hv_parts))
            hvec = _flat([hv.get(id(p)) for p in self.params], self.params)
            gvec = _flat([None if g is None else g.detach() for g in grads], self.params)
            h = v * hvec
            self.k_ema += 1
            self.m.mul_(0.9).add_(gvec, alpha=0.1)
            self.s.mul_(0.999).addcmul_(h, h, value=0.001)
            ghat = self.m / (1 - 0.9 ** self.k_ema)
            D = torch.sqrt(self.s / (1 - 0.999 ** self.k_ema)) + 1e-4
            n_b = len(idx)
            g0.add_(ghat, alpha=n_b)
            h0.add_(D if self.cfg.approx_moment else h, alpha=n_b)
            l0 += float(loss.detach()) * n_b
            kappa += float(D.norm())
            total += n_b
            nb += 1
        self.g0, self.h0, self.L0 = g0 / total, h0 / total, l0 / total
        self.delta = torch.zeros(self.numel, device=self.device)
        self.opt.zero_grad(set_to_none=True)
        return kappa / nb

    # --- check (docs/methods/crest.md#crest-quadratic-model) --------------------------------------
    def check(self) -> bool:
        """True when the quadratic model's relative error on the random subsets exceeds τ."""
        self._sync()
        t0 = time.perf_counter()
        logits = self._eval_logits(self.R_uniq)
        ce = F.cross_entropy(logits.float(), self.y[self.R_uniq], reduction="none")
        l_true = float((ce * self.R_counts).sum() / self.R_counts.sum())
        d = self.delta
        l_app = self.L0 + float(d @ self.g0) + 0.5 * float((d * self.h0 * d).sum())
        err = abs(l_true - l_app)
        self.check_errors.append(err / max(l_true, 1e-12))
        self.check_seconds += time.perf_counter() - t0
        return err > self.cfg.check_thresh_factor * l_true

    # --- batches ----------------------------------------------------------------------------------
    def next_coreset_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Shuffled batches of B from the coreset union, reshuffled when exhausted
        (docs/methods/crest.md#crest-training-on-coresets)."""
        if self._perm is None or self._pos >= len(self.U):
            self._perm = torch.randperm(len(self.U), generator=self.gen).to(self.device)
            self._pos = 0
        sl = self._perm[self._pos:self._pos + self.cfg.batch_size]
        self._pos += self.cfg.batch_size
        return self.U[sl], self.Uw[sl]

    # --- the run (docs/methods/crest.md#crest-pseudocode) -----------------------------------------
    def run(self) -> dict:
        """Spend the whole SGD-step budget (epoch 0 on full data, then the coresets) and return ``info``."""
        self._start_run()
        for t in range(self.total):
            epoch = t // self.spe
            if t % self.spe == 0:
                self._set_epoch_lr(epoch)
            self._select_or_check(t, epoch)
            idx, w = self._step_batch(t)
            self._train_step(t, idx, w)
            if self._bar is not None:
                self._bar.update(1)
            if (t + 1) % self.spe == 0:  # end of a CREST epoch
                self._end_epoch(epoch)
        return self._result()

    def _start_run(self) -> None:
        """Per-run state: the epoch-0 full-data order, the step of the last selection, the curves, the running
        loss/accuracy sums, the clock and the progress bar."""
        self._curves: dict[str, list[float]] = {k: [] for k in (
            "epoch_loss", "epoch_accuracy", "pool_size", "check_interval", "num_coresets", "epoch_selections")}
        self._epoch_test: list[float] = []
        self._reselections = 0
        self._selections_before = 0  # selections made before the current epoch
        self._full_perm = torch.randperm(self.n, generator=self.gen).to(self.device)  # epoch-0 batches (full data)
        self._t0_sel = self.spe  # step of the last selection (first selection at the start of epoch 1)
        self.model.train()
        self._sync()
        self._start = time.perf_counter()
        self._tot_loss = torch.zeros((), device=self.device)
        self._tot_correct = torch.zeros((), device=self.device)
        self._seen = 0
        self._lr = 0.0
        self._bar = None
        if self.ctx.progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc="crest", leave=False, unit="step")

    def _set_epoch_lr(self, epoch: int) -> None:
        """The schedule's LR for this CREST epoch, set on the optimiser."""
        self._lr = lr_for_epoch(self.cfg, epoch)
        for g in self.opt.param_groups:
            g["lr"] = self._lr

    def _select_or_check(self, t: int, epoch: int) -> None:
        """The first selection at the start of epoch 1; afterwards, every ``ci`` steps since the last selection,
        the quadratic-model check, which re-selects at this same step when the model's error exceeds τ."""
        if t == self.spe:
            self.select(epoch)
        elif t > self._t0_sel and (t - self._t0_sel) % self.ci == 0 and self.check():
            self._t0_sel = t
            self._reselections += 1
            self.select(epoch)

    def _step_batch(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Step ``t``'s examples and weights: in epoch 0 the next full-data mini-batch with unit weights
        (counted as trained on when LR > 0), afterwards the next batch of the coreset union."""
        if t < self.spe:
            B = self.cfg.batch_size
            s = (t * B) % self.n
            idx = self._full_perm[s:s + B]
            w = torch.ones(len(idx), device=self.device)
            if self._lr > 0:
                self.counts.index_add_(0, idx, w)
            return idx, w
        return self.next_coreset_batch()

    def _train_step(self, t: int, idx: torch.Tensor, w: torch.Tensor) -> None:
        """One SGD step on the weighted mini-batch (δ moves with it after epoch 0), or at LR 0 the forward pass
        only; adds the batch to the epoch's running loss and accuracy."""
        xb, yb = crop_flip(self.x[idx], self.aug_gen, *self.aug_flags), self.y[idx]
        lr = self._lr
        if lr > 0:
            out = self.model(xb)
            loss = (F.cross_entropy(out, yb, reduction="none") * w).mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            # δ ← δ − lr·∇L_batch, before the update (docs/methods/crest.md#crest-quadratic-model).
            if t >= self.spe:
                g = _flat([p.grad for p in self.params], self.params)
                self.delta.add_(g, alpha=-lr)
            self.opt.step()
        else:  # LR 0: no weight changes; the forward pass keeps batch-norm statistics as in the reference
            with torch.no_grad():
                out = self.model(xb)
                loss = (F.cross_entropy(out, yb, reduction="none") * w).mean()
        self._tot_loss += loss.detach() * len(idx)
        self._tot_correct += (out.detach().argmax(1) == yb).sum()
        self._seen += len(idx)

    def _end_epoch(self, epoch: int) -> None:
        """Record the epoch's curves, reset the running sums and, every ``test_every`` epochs, test the model
        (the test time is not counted as training time)."""
        c = self._curves
        c["epoch_loss"].append(float(self._tot_loss) / self._seen)
        c["epoch_accuracy"].append(float(self._tot_correct) / self._seen)
        c["pool_size"].append(float(sum(len(p) for p in self.pools)))
        c["check_interval"].append(float(self.ci))
        c["num_coresets"].append(float(self.P))
        c["epoch_selections"].append(float(self.selections - self._selections_before))
        self._selections_before = self.selections
        self._tot_loss.zero_()
        self._tot_correct.zero_()
        self._seen = 0
        test = self.ctx.test
        if test is not None and self.cfg.test_every and (epoch + 1) % self.cfg.test_every == 0:
            pause = time.perf_counter()
            self._epoch_test.append(accuracy(self.model, test, self.device))
            self._start += time.perf_counter() - pause  # test evaluation is not training time

    def _result(self) -> dict:
        """Stop the clock and build ``info``: timings, step and selection counts, curves, final test accuracy."""
        if self._bar is not None:
            self._bar.close()
        self._sync()
        train_seconds = time.perf_counter() - self._start
        info = {
            "train_seconds": train_seconds,
            "selection_seconds": self.selection_seconds + self.check_seconds,
            "check_seconds": self.check_seconds,
            "steps": float(self.total),
            "steps_per_epoch": float(self.spe),
            "selections": float(self.selections),
            "reselections": float(self._reselections),
            "dropped": float(self.dropped),
            **self._curves,
            "check_error": self.check_errors,
            "kappa": self.kappas,
        }
        if self._epoch_test:
            info["epoch_test_accuracy"] = self._epoch_test
        acc = accuracy_on_test_split(self.model, self.ctx, self.ds)
        if acc is not None:
            info["test_accuracy"] = acc
        return info

@register_selector("crest")
class CrestSelector(TrainingTimeSelector):
    """Train on weighted mini-batch coresets within fraction × the full run's SGD steps (CREST).

    Returns the examples it trained on, weighted by how often they were selected; ``info`` holds the trained
    model's test accuracy and the training curves. See docs/methods/crest.md."""

    config_cls = CrestConfig
    smoke = {"epochs": 3, "batch_size": 12, "warmup_epochs": 0, "lr_milestones": "", "random_subset_size": 0.3,
             "num_minibatch_coreset": 2, "drop_learned": False}

    def select(self, ds: ImageDataset, fraction: float, ctx: RunContext, prepared=None) -> Selection:
        fraction = check_fraction(fraction)
        cfg = self.config
        self.check_config(cfg)  # a config built by hand
        if len(ds) == 0:
            raise SmallsetError("CREST needs a non-empty training set.")
        run = _Crest(cfg, ds, fraction, ctx)
        info = run.run()
        counts = run.counts.cpu()
        indices = torch.nonzero(counts > 0, as_tuple=True)[0]
        self.trained_model = run.model  # the trained network, for callers that want it
        return Selection(indices, counts[indices], info=info)
