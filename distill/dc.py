"""DC: Dataset Condensation with Gradient Matching (Zhao, Mopuri & Bilen, ICLR 2021).

Every outer iteration draws a fresh random network; the synthetic images take joint steps that make the
gradient of the loss on each class's synthetic images match the gradient on real images of that class
(layer-wise cosine distance), and between those steps the network trains on the synthetic set.
:class:`DCCondenser` is also the base of DSA.

Rationale and the paper's recipe: docs/methods/dc.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from smallset.config import option
from smallset.context import RunContext
from smallset.data import ImageDataset
from smallset.distill._matching import (  # noqa: F401
    RealSampler,
    check_dsa_strategy,
    freeze_batchnorm,
    new_network,
    setup_matching_state,
    train_on_synthetic,
)
from smallset.distill._memory import breakdown
from smallset.distill._streaming import chunk_for, real_gradient
from smallset.distill.base import IterativeCondenser, Synthetic, register_condenser
from smallset.errors import SmallsetError
from smallset.train import Protocol, get_protocol

# get_loops of the reference code (docs/methods/dc.md#dc-loops): ipc → (outer_loop, inner_loop).
LOOPS: dict[int, tuple[int, int]] = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15),
                                     50: (50, 10)}


def loops_for_ipc(ipc: int) -> tuple[int, int]:
    """(outer_loop, inner_loop) for ``ipc`` (docs/methods/dc.md#dc-loops).

    The reference code knows ipc 1/10/20/30/40/50 only and aborts for any other value. Fallback here:
    above 50, (50, 10), one of the two settings the authors advise for large ipc ([issues] #2; the other is
    (20, 25)); between table entries, the row of the nearest tabled ipc (ties go to the smaller one).
    """
    if ipc < 1:
        raise SmallsetError(f"ipc must be at least 1; got {ipc}.")
    if ipc in LOOPS:
        return LOOPS[ipc]
    if ipc > 50:
        return LOOPS[50]
    nearest = min(LOOPS, key=lambda k: (abs(k - ipc), k))
    return LOOPS[nearest]


@dataclass
class DCConfig:
    """DC hyper-parameters (docs/methods/dc.md#dc-loops); :meth:`for_ipc` fills in the per-ipc loop lengths."""

    iterations: int = option(1000, "outer iterations, each with a fresh random network", ge=1)
    outer_loop: int = option(1, "image steps per iteration (get_loops; set per ipc)", ge=1)
    inner_loop: int = option(1, "network epochs on the synthetic set between image steps", ge=0)
    lr_img: float = option(0.1, "SGD learning rate of the synthetic images", gt=0)
    momentum_img: float = option(0.5, "SGD momentum of the synthetic images", ge=0)
    lr_net: float = option(0.01, "SGD learning rate of the network in the inner loop", gt=0)
    momentum_net: float = option(0.0, "SGD momentum of the network (0.5 in the first DC code)", ge=0)
    batch_real: int = option(256, "real images per class per matching step", ge=1)
    batch_train: int = option(256, "mini-batch size of the inner-loop network training", ge=1)
    init: Literal["real", "noise"] = option("noise", "initialise from real images or N(0,1) noise")

    @classmethod
    def for_ipc(cls, ipc: int) -> "DCConfig":
        """The paper's defaults for ``ipc``; above 50 ipc also ``init='real'`` as the authors advise
        (docs/methods/dc.md#dc-loops)."""
        outer, inner = loops_for_ipc(ipc)
        cfg = cls(outer_loop=outer, inner_loop=inner)
        if ipc > 50:
            cfg.init = "real"
        return cfg


# --- shared pieces ---------------------------------------------------------------------------------
def gradient_distance(g_real: Sequence[torch.Tensor], g_syn: Sequence[torch.Tensor]) -> torch.Tensor:
    """DC's layer-wise gradient distance (``dis_metric='ours'``, docs/methods/dc.md#dc-gradient-distance).

    For each pair of gradient tensors of the same parameter: 1-D tensors (biases, norm scales/shifts)
    contribute 0; others are reshaped to ``[out, rest]`` (conv ``[out, in·kh·kw]``, linear as is, 3-D
    ``[C, H·W]``) and contribute Σ_rows (1 − ⟨a, b⟩ / (‖a‖·‖b‖ + 1e-6)). Returns the sum over tensors
    (a 0-d tensor; differentiable).
    """
    g_real, g_syn = list(g_real), list(g_syn)
    if len(g_real) != len(g_syn):
        raise SmallsetError(f"Gradient lists differ in length ({len(g_real)} vs {len(g_syn)}).")
    total = None
    for gr, gs in zip(g_real, g_syn):
        if gr.shape != gs.shape:
            raise SmallsetError(f"Gradient shapes differ: {tuple(gr.shape)} vs {tuple(gs.shape)}.")
        if gr.ndim <= 1:
            continue
        a = gr.reshape(gr.shape[0], -1)
        b = gs.reshape(gs.shape[0], -1)
        d = torch.sum(1 - torch.sum(a * b, dim=-1) / (a.norm(dim=-1) * b.norm(dim=-1) + 1e-6))
        total = d if total is None else total + d
    if total is None:
        ref = g_syn[0] if g_syn else torch.zeros(())
        return torch.zeros((), dtype=ref.dtype, device=ref.device)
    return total


def dc_paper_recipe(dataset_key: str | None) -> Protocol:
    """DC's evaluation: the DC augmentation and 1000 epochs on MNIST, no augmentation and 300 elsewhere
    (CAFE's code copies it)."""
    if dataset_key == "mnist":
        return get_protocol("paper-1000", augment="dc:crop_scale_rotate")
    return get_protocol("paper")


@register_condenser("dc")
class DCCondenser(IterativeCondenser):
    """Gradient matching (docs/methods/dc.md#dc-algorithm): per iteration a fresh network, ``outer_loop``
    joint image steps, each followed (except the last) by ``inner_loop`` epochs of network training on the
    synthetic set."""

    config_cls = DCConfig
    # DC starts from real images in the demo: from noise (its paper default) 5 iterations learn nothing.
    demo = {"iterations": 5, "outer_loop": 2, "inner_loop": 5, "batch_real": 64, "init": "real"}
    smoke = {"iterations": 4, "outer_loop": 2, "inner_loop": 1, "batch_real": 4, "batch_train": 2}
    siamese: bool = False  # DSA switches on Siamese augmentation (distill.dsa)
    memory_options = ("batch_real",)
    models_working_memory = True

    def memory_breakdown(self, ds: ImageDataset, ipc: int, ctx: RunContext) -> dict[str, int]:
        """Bytes by term (docs/methods/condenser-memory.md): one class's real batch at a time with a
        backward through it; one class's synthetic images with a double backward; the inner loop's
        training batch on the synthetic set."""
        cfg = self.config
        n_syn = ds.num_classes * int(ipc)
        inner = min(cfg.batch_train, n_syn) if cfg.outer_loop > 1 and cfg.inner_loop else 0
        return breakdown(ds, ipc, ctx, batch_real=cfg.batch_real, per_class=True, real_backward=True,
                         dsa=self.siamese, syn_factor=3, syn_rows=int(ipc), inner_rows=inner)

    def extra_memory_bytes(self, ds: ImageDataset, budget: int, ctx: RunContext) -> int:
        return sum(self.memory_breakdown(ds, int(budget), ctx).values())

    def paper_recipe(self, dataset_key, channels, info):
        return dc_paper_recipe(dataset_key)

    # -- hooks -------------------------------------------------------------------------------------
    @classmethod
    def check_config(cls, config: DCConfig) -> None:
        super().check_config(config)  # the declared ranges and choices
        check_dsa_strategy(config)

    def setup(self, ds: ImageDataset, ipc: int, ctx: RunContext) -> None:
        setup_matching_state(self, ds, ipc, ctx)
        self.augment = self.make_augment(ds) if self.siamese else None
        self._new_net()  # fail early on a bad model name or options

    def make_augment(self, ds: ImageDataset):
        """The augmentation object (DSA overrides this); needs ``siamese`` and ``__call__``."""
        raise NotImplementedError

    def _new_net(self) -> nn.Module:
        return new_network(self)

    def step(self, it: int) -> float:
        cfg, ipc = self.config, self.ipc
        net = self._new_net()
        params = list(net.parameters())
        opt_net = torch.optim.SGD(net.parameters(), lr=cfg.lr_net, momentum=cfg.momentum_net)
        g_real, g_aug = self.generators["real"], self.generators["aug"]
        total = 0.0
        for ol in range(cfg.outer_loop):
            freeze_batchnorm(net, self.sampler, g_real)
            grad = torch.zeros_like(self.syn)
            for c in range(self.num_classes):
                xr = self.sampler.batch(c, cfg.batch_real, g_real)
                xs = self.syn[c * ipc:(c + 1) * ipc]
                xr_in, xs_in = (self.augment.siamese(xr, xs, generator=g_aug) if self.augment is not None
                                else (xr, xs))
                ys = torch.full((ipc,), c, dtype=torch.long, device=self.device)
                # The real gradient, streamed in chunks on the CPU (distill/_streaming.py; same gradient).
                gr = real_gradient(net, params, xr_in, c, chunk_for(self.device, net))
                gs = torch.autograd.grad(F.cross_entropy(net(xs_in), ys), params, create_graph=True)
                dist = gradient_distance(gr, gs)
                grad[c * ipc:(c + 1) * ipc] += torch.autograd.grad(dist, xs)[0]
                total += float(dist.detach())
            self.opt.zero_grad(set_to_none=True)
            self.syn.grad = grad
            self.opt.step()
            if ol == cfg.outer_loop - 1:
                break
            if cfg.inner_loop:
                augment = None
                if self.augment is not None:
                    augment = lambda xb: self.augment(xb, generator=g_aug)  # noqa: E731
                train_on_synthetic(net, opt_net, self.syn, self.labels, cfg.inner_loop, cfg.batch_train,
                                   self.generators["shuffle"], augment)
        # Reference's loss_avg: the matching distance per class and outer step.
        return total / (self.num_classes * cfg.outer_loop)

    def result(self) -> Synthetic:
        return Synthetic(
            images=self.syn.detach().cpu().clone(),
            labels=self.labels.cpu().clone(),
            info={"mean_abs_change": float((self.syn.detach().cpu() - self.init_images).abs().mean())},
        )
