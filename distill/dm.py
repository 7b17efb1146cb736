"""DM — Dataset Condensation with Distribution Matching (Zhao & Bilen, WACV 2023; arXiv 2110.04181).

Every iteration draws a new random, frozen network and moves the synthetic images so that each class's mean
embedding matches the mean embedding of a batch of real images of that class (a linear-kernel MMD), after
one Siamese DSA transformation per class; one joint image step per iteration, all classes batched together.

Rationale and the paper's recipe: docs/methods/dm.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from smallset.augment import DEFAULT_STRATEGY, DSA
from smallset.config import option
from smallset.context import RunContext
from smallset.data import ImageDataset
from smallset.distill._matching import check_dsa_strategy
from smallset.distill._memory import breakdown
from smallset.distill._streaming import PixelRows, chunk_for, chunks, embed_chunks, keep_freed_memory
from smallset.distill.base import IterativeCondenser, Synthetic, init_synthetic, register_condenser
from smallset.models import seeded_model


@dataclass
class DMConfig:
    """DM hyper-parameters (docs/methods/dm.md#dm-hyperparameters): the paper's CIFAR settings for ipc 1/10/50."""

    iterations: int = option(20000, "outer iterations (one random network each)", ge=1)
    lr_img: float = option(1.0, "SGD learning rate of the synthetic images", gt=0)
    momentum: float = option(0.5, "SGD momentum of the synthetic images", ge=0)
    batch_real: int = option(256, "real images per class per iteration", ge=1)
    init: Literal["real", "noise"] = option("real", "initialise from real images or N(0,1) noise")
    dsa: bool = option(True, "Siamese DSA augmentation of real and synthetic batches")
    dsa_strategy: str = option("", "DSA strategy; empty = the reference's default for the dataset and method")

    @classmethod
    def for_ipc(cls, ipc: int) -> "DMConfig":
        """lr_img 1 up to 50 ipc, 10 from 100 ipc (the CIFAR-10 settings of the DM README,
        docs/methods/dm.md#dm-hyperparameters; its CIFAR-100 runs at 100/125 ipc kept 1 — pass
        ``--lr-img 1`` there)."""
        return cls(lr_img=10.0 if int(ipc) >= 100 else 1.0)


@register_condenser("dm")
class DMCondenser(IterativeCondenser):
    """Distribution matching of mean random-network embeddings (docs/methods/dm.md)."""

    config_cls = DMConfig
    demo = {"iterations": 100, "batch_real": 64}
    smoke = {"iterations": 4, "batch_real": 4}
    memory_options = ("batch_real",)
    models_working_memory = True

    def dsa_strategy_for(self, channels: int, dataset_key: str | None) -> str:
        """DM's code augments with the full strategy (flip included) on every dataset."""
        return DEFAULT_STRATEGY

    def memory_breakdown(self, ds: ImageDataset, ipc: int, ctx: RunContext) -> dict[str, int]:
        """Bytes by term (docs/methods/condenser-memory.md): every class's real batch at once, no backward
        through it; the synthetic set with a graph for one backward."""
        cfg = self.config
        return breakdown(ds, ipc, ctx, batch_real=cfg.batch_real, per_class=False, real_backward=False,
                         dsa=cfg.dsa, syn_factor=1)

    def extra_memory_bytes(self, ds: ImageDataset, budget: int, ctx: RunContext) -> int:
        return sum(self.memory_breakdown(ds, int(budget), ctx).values())

    @classmethod
    def check_config(cls, config: DMConfig) -> None:
        super().check_config(config)  # the declared ranges and choices
        check_dsa_strategy(config)

    def setup(self, ds: ImageDataset, ipc: int, ctx: RunContext) -> None:
        cfg = self.config
        self.ctx, self.ipc = ctx, ipc
        self.device = torch.device(ctx.device)
        self.num_classes, self.channels, self.size = ds.num_classes, ds.channels, ds.image_size
        self.generators = {
            "init": ctx.generator(401),
            "net": ctx.generator(402),
            "real": ctx.generator(403),
            "aug": ctx.generator(404),
        }
        self.strategy = (cfg.dsa_strategy or self.dsa_strategy_for(ds.channels, ds.dataset_key)) if cfg.dsa else "none"
        self.dsa = DSA(self.strategy) if cfg.dsa else None

        # The whole training set on the device once (pixel scale, normalised per batch: no second copy),
        # with a padded class → example index table (docs/methods/dc.md#condensation-data).
        self.x_real = PixelRows(ds.images, ds.mean, ds.std, self.device)
        if self.device.type == "cpu":
            keep_freed_memory()
        counts = torch.tensor(ds.class_counts())
        self.n_per_class = counts.clamp(max=cfg.batch_real)
        width = int(counts.max())
        table = torch.zeros(self.num_classes, width, dtype=torch.long)
        for c, idx in enumerate(ds.class_indices()):
            table[c, : len(idx)] = idx
        self.class_table = table
        self.pad = torch.arange(width).view(1, -1) >= counts.view(-1, 1)  # True where no example
        take = int(self.n_per_class.max())
        self.real_mask = torch.arange(take).view(1, -1) < self.n_per_class.view(-1, 1)
        self.real_labels = torch.arange(self.num_classes).view(-1, 1).expand(-1, take)[self.real_mask].to(self.device)
        self.real_counts = self.n_per_class.to(self.device, torch.float32).view(-1, 1)

        syn, labels = init_synthetic(ds, ipc, cfg.init, self.generators["init"])
        self.syn = syn.to(self.device).requires_grad_(True)
        self.labels = labels
        self.syn_groups = labels.to(self.device)
        self.opt = torch.optim.SGD([self.syn], lr=cfg.lr_img, momentum=cfg.momentum)

    # --- one iteration ------------------------------------------------------------------------
    def _real_batch(self) -> torch.Tensor:
        """Indices of ``n_per_class`` random distinct examples of every class, class-major."""
        keys = torch.rand(self.class_table.shape, generator=self.generators["real"])
        keys.masked_fill_(self.pad, 2.0)
        order = keys.argsort(dim=1)[:, : self.real_mask.shape[1]]
        picked = torch.gather(self.class_table, 1, order)
        return picked[self.real_mask].to(self.device)

    def _network(self) -> torch.nn.Module:
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generators["net"]))
        net = seeded_model(self.ctx.model, self.channels, self.num_classes, self.size, seed,
                           **(self.ctx.model_kwargs or {}))
        net = net.to(self.device)
        net.requires_grad_(False)
        net.train()  # as the reference; instance norm behaves the same in both modes
        return net

    def step(self, it: int) -> float:
        net = self._network()
        xr = self.x_real.rows(self._real_batch())
        xs = self.syn
        if self.dsa is not None:
            xr, xs = self.dsa.siamese_groups([xr, xs], [self.real_labels, self.syn_groups],
                                             generator=self.generators["aug"], num_groups=self.num_classes)
        # Per-image networks stream both sides in chunks (distill/_streaming.py); a BatchNorm net in train
        # mode sees each side as one batch, as in the reference.
        chunk = chunk_for(self.device, net)
        sums = None
        with torch.no_grad():
            for s, e in chunks(len(xr), chunk):
                er = net.embed(xr[s:e])
                if sums is None:
                    sums = torch.zeros(self.num_classes, er.shape[1], device=er.device, dtype=er.dtype)
                sums.index_add_(0, self.real_labels[s:e], er)
        es = embed_chunks(net, xs, chunk)
        mean_r = sums / self.real_counts
        mean_s = es.view(self.num_classes, self.ipc, -1).mean(dim=1)
        loss = ((mean_r - mean_s) ** 2).sum()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def result(self) -> Synthetic:
        info = {
            "dsa_strategy": self.strategy,
            "real_per_class": int(self.n_per_class.min()),
            "init": self.config.init,
        }
        return Synthetic(images=self.syn.detach().cpu().clone(), labels=self.labels.clone(), info=info)
