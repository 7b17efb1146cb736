"""Shared machinery of the matching condensers (DC, DSA, CAFE): the per-class real-image sampler, the
inner-loop training on the synthetic set, BatchNorm freezing, and the run state they set up alike.
Not a condenser: registers nothing."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from smallset.augment import parse_strategy
from smallset.context import RunContext
from smallset.data import ImageDataset
from smallset.distill._streaming import PixelRows, chunk_for, chunks, keep_freed_memory
from smallset.distill.base import Condenser, init_synthetic
from smallset.errors import SmallsetError
from smallset.models import seeded_model

# Real images per class forwarded to set the BatchNorm statistics before matching (reference: BNSizePC).
BN_IMAGES_PER_CLASS = 16


class RealSampler:
    """The real training set on the device with per-class random batches, normalised per batch
    (docs/methods/dc.md#condensation-data): the images are kept once, in pixel scale
    (:class:`~smallset.distill._streaming.PixelRows`), with no second, normalised copy of the set."""

    def __init__(self, ds: ImageDataset, device: torch.device):
        self.device = torch.device(device)
        self.pixels = PixelRows(ds.images, ds.mean, ds.std, self.device)
        self.class_idx = ds.class_indices()
        self.num_classes = ds.num_classes

    def indices(self, c: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """``min(n, class size)`` random distinct rows of class ``c`` (a fresh permutation per draw)."""
        idx = self.class_idx[c]
        return idx[torch.randperm(len(idx), generator=generator)[:n]]

    def batch(self, c: int, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.pixels.rows(self.indices(c, n, generator))

    def batch_all(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Class-major batch: ``min(n, size of c)`` images of every class c, and their labels."""
        picks = [self.indices(c, n, generator) for c in range(self.num_classes)]
        labels = torch.cat([torch.full((len(p),), c, dtype=torch.long) for c, p in enumerate(picks)])
        return self.pixels.rows(torch.cat(picks)), labels.to(self.device)


def train_on_synthetic(net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, epochs: int,
                       batch_size: int, generator: torch.Generator,
                       augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """Train ``net`` for ``epochs`` shuffled epochs of plain CE on the (detached) set ``x, y`` (the inner
    loop, docs/methods/dc.md#dc-algorithm); ``augment`` (DSA, non-Siamese) is applied to every mini-batch.
    Returns the last batch loss."""
    net.train()
    x, y = x.detach(), y.detach()
    loss = torch.zeros(())
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=generator).to(x.device)
        for start in range(0, len(x), batch_size):
            idx = perm[start:start + batch_size]
            xb, yb = x[idx], y[idx]
            if augment is not None:
                xb = augment(xb)
            opt.zero_grad(set_to_none=True)
            chunk = chunk_for(x.device, net)
            if chunk and len(xb) > chunk:
                # Streamed in chunks on the CPU (distill/_streaming.py): the per-chunk gradients of the
                # batch-mean loss add up to the batch's gradient.
                loss = torch.zeros((), device=x.device)
                for s, e in chunks(len(xb), chunk):
                    part = F.cross_entropy(net(xb[s:e]), yb[s:e], reduction="sum") / len(xb)
                    part.backward()
                    loss = loss + part.detach()
            else:
                loss = F.cross_entropy(net(xb), yb)
                loss.backward()
            opt.step()
    return float(loss.detach())


def freeze_batchnorm(net: nn.Module, sampler: RealSampler, generator: torch.Generator) -> None:
    """For networks with BatchNorm (docs/methods/dc.md#dc-algorithm): set the running statistics from 16 real
    images per class in train mode, then put every BatchNorm layer in eval mode. A no-op for other networks."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    x, _ = sampler.batch_all(BN_IMAGES_PER_CLASS, generator)
    net.train()
    with torch.no_grad():
        net(x)
    for m in bns:
        m.eval()


def check_dsa_strategy(cfg) -> None:
    """What a condenser's field declarations cannot say: where the config has one, a well-formed
    ``dsa_strategy`` (checked even when DSA is off, so a typo is never silently ignored)."""
    if getattr(cfg, "dsa_strategy", ""):
        try:
            parse_strategy(cfg.dsa_strategy)
        except SmallsetError as e:
            raise SmallsetError(f"dsa_strategy: {str(e)[:1].lower()}{str(e)[1:]}", option="dsa_strategy") from None


def setup_matching_state(cond: Condenser, ds: ImageDataset, ipc: int, ctx: RunContext, **more_generators: int) -> None:
    """The run state DC, DSA and CAFE share, set on ``cond``: context, device, shapes, named generators
    (``init``, ``real``, ``shuffle``, ``aug``, ``net``, plus ``more_generators`` name → offset), the synthetic
    images initialised by ``cond.config.init`` with their SGD optimiser (``lr_img``, ``momentum_img``) and
    the per-class real-image sampler."""
    cfg = cond.config
    cond.ctx, cond.ipc = ctx, ipc
    cond.device = torch.device(ctx.device)
    cond.num_classes = ds.num_classes
    cond.shape = (ds.channels, ds.image_size)
    cond.generators = {
        "init": ctx.generator(1),
        "real": ctx.generator(2),
        "shuffle": ctx.generator(3),
        "aug": ctx.generator(4),
        **{name: ctx.generator(offset) for name, offset in more_generators.items()},
        # networks: the stream torch.manual_seed(seed) gives, as before this was a named generator
        "net": torch.Generator().manual_seed(ctx.seed),
    }
    syn, labels = init_synthetic(ds, ipc, cfg.init, cond.generators["init"])
    cond.init_images = syn.clone()
    cond.syn = syn.to(cond.device).requires_grad_(True)
    cond.labels = labels.to(cond.device)
    cond.opt = torch.optim.SGD([cond.syn], lr=cfg.lr_img, momentum=cfg.momentum_img)
    cond.sampler = RealSampler(ds, cond.device)
    if cond.device.type == "cpu":
        keep_freed_memory()  # chunk-sized activations reuse the heap (distill/_streaming.py)


def new_network(cond: Condenser) -> nn.Module:
    """The next freshly initialised network of ``cond``'s ``net`` generator, in train mode on its device."""
    c, size = cond.shape
    net = seeded_model(cond.ctx.model, c, cond.num_classes, size, cond.generators["net"],
                       **(cond.ctx.model_kwargs or {}))
    return net.to(cond.device).train()
