"""CAFE: Condense dataset by Aligning FEatures (Wang, Zhao et al., CVPR 2022).

Every iteration draws a fresh random ConvNet; the synthetic images take steps that align their class-mean
features with the real images' at several layers, plus a discrimination loss, while a dynamic bi-level loop
(accuracy-probe stop rules λ1/λ2) decides how many image steps and network epochs each iteration gets.
Optional CAFE+DSA (Siamese DSA per class).

Rationale and the paper's recipe: docs/methods/cafe.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from smallset.config import option
from smallset.context import RunContext
from smallset.data import ImageDataset
from smallset.distill._matching import check_dsa_strategy, new_network, setup_matching_state, train_on_synthetic
from smallset.distill._streaming import chunk_for
from smallset.distill.base import IterativeCondenser, Synthetic, register_condenser
from smallset.distill.dc import dc_paper_recipe
from smallset.errors import SmallsetError

REAL_CHUNK = 1024  # real images per no-grad forward (memory bound; on the CPU: _streaming.CPU_CHUNK)


@dataclass
class CAFEConfig:
    """CAFE hyper-parameters (docs/methods/cafe.md#cafe-defaults); CAFE has no per-ipc schedule."""

    iterations: int = option(2000, "outer iterations, each with a fresh random network", ge=1)
    lr_img: float = option(0.1, "SGD learning rate of the synthetic images", gt=0)
    momentum_img: float = option(0.5, "SGD momentum of the synthetic images", ge=0)
    lr_halving: str = option("0.6,0.8,0.9", "fractions of the iterations after which lr_img is halved "
                                            "(1200/1600/1800 of 2000); empty = never")
    lr_net: float = option(0.01, "SGD learning rate of the network in the inner loop", gt=0)
    batch_real: int = option(256, "real images per class per image step", ge=1)
    batch_train: int = option(256, "mini-batch size of the inner-loop network training", ge=1)
    init: Literal["real", "noise"] = option("noise", "initialise from real images or N(0,1) noise")
    layer_weights: str = option("0.1,0.1,1.0,1.0", "alignment weights of f1..f4 (shallow to deep), one per "
                                                   "layer_outputs entry")
    weight_last: float = option(1.0, "weight of the last-layer (f5) centre alignment", ge=0)
    weight_discrimination: float = option(0.01, "weight of the discrimination loss", ge=0)
    lambda1: float = option(0.04, "outer loop ends when the probe window spans less than this", ge=0)
    lambda2: float = option(0.03, "inner loop ends when the probe window spans more than this", ge=0)
    watch_window: int = option(10, "accuracy probes the stop rules look at", ge=2)
    probe_per_class: int = option(128, "fresh real images per class in each accuracy probe", ge=1)
    max_outer_steps: int = option(100, "cap on image steps per iteration (not in the paper; at least watch_window)",
                                  ge=2)
    max_inner_epochs: int = option(100, "cap on epochs per inner loop (not in the paper; at least watch_window)",
                                   ge=2)
    accumulator_quirk: bool = option(True, "replicate the reference's unreset accuracy accumulator in the stop rules")
    dsa: bool = option(False, "CAFE+DSA: Siamese DSA in matching, DSA in the inner loop")
    dsa_strategy: str = option("", "DSA strategy; empty = the reference's default for the dataset and method")


class LoopWatcher:
    """One of CAFE's dynamic stop rules (docs/methods/cafe.md#cafe-loop), fed one accuracy probe at a time.

    ``stop_when='stable'`` (outer loop, threshold λ1): stop once the last ``window`` values span less than
    the threshold. ``stop_when='changed'`` (inner loop, λ2): stop once they span more than it. The value
    recorded for a probe is ``accuracy + carry · previous value`` (``carry = 1/classes`` replicates the
    reference's accumulator quirk, 0 gives the plain accuracy), starting from 0. When the window is full and
    the rule does not fire, the oldest value drops out. ``cap`` (steps) ends the loop regardless; ``reason``
    says which rule fired (``"threshold"`` or ``"cap"``).
    """

    def __init__(self, threshold: float, stop_when: Literal["stable", "changed"], window: int = 10,
                 carry: float = 0.0, cap: int | None = None):
        if stop_when not in ("stable", "changed"):
            raise ValueError("stop_when must be 'stable' or 'changed'")
        if window < 2:
            raise SmallsetError(f"watch_window must be at least 2; got {window}.", option="watch_window")
        self.threshold, self.stop_when, self.window = float(threshold), stop_when, int(window)
        self.carry, self.cap = float(carry), cap
        self.value = 0.0
        self.history: list[float] = []
        self.steps = 0
        self.reason: str | None = None

    def update(self, accuracy: float) -> bool:
        """Record one probe; True when the loop should stop now."""
        self.value = float(accuracy) + self.carry * self.value
        self.steps += 1
        self.history.append(self.value)
        if len(self.history) == self.window:
            spread = max(self.history) - min(self.history)
            fired = spread < self.threshold if self.stop_when == "stable" else spread > self.threshold
            if fired:
                self.reason = "threshold"
                return True
            self.history.pop(0)
        if self.cap is not None and self.steps >= self.cap:
            self.reason = "cap"
            return True
        return False


def halved_lr(lr: float, it: int, milestones: list[int]) -> float:
    """lr_img at iteration ``it``: halved once for every milestone iteration reached
    (docs/methods/cafe.md#cafe-loop)."""
    return lr * 0.5 ** sum(it >= m for m in milestones)


def parse_floats(text: str, what: str) -> list[float]:
    try:
        return [float(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise SmallsetError(f"{what} must be comma-separated numbers, e.g. 0.1,0.1,1.0,1.0; got {text!r}.",
                             option=what) from None


def class_means(x: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean of the rows of ``x`` per class (index_add); every class must have at least one row."""
    sums = torch.zeros((num_classes,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    sums.index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=num_classes).to(x.dtype)
    return sums / counts.view((-1,) + (1,) * (x.ndim - 1))


@register_condenser("cafe")
class CAFECondenser(IterativeCondenser):
    """Layer-wise feature alignment + discrimination loss with CAFE's dynamic bi-level loop
    (docs/methods/cafe.md)."""

    config_cls = CAFEConfig
    demo = {"iterations": 3, "max_outer_steps": 3, "max_inner_epochs": 3, "watch_window": 3, "probe_per_class": 16,
            "batch_real": 64}
    smoke = {"iterations": 4, "batch_real": 4, "probe_per_class": 4, "watch_window": 2, "max_outer_steps": 3,
             "max_inner_epochs": 2, "lr_halving": "0.5", "batch_train": 2}
    memory_options = ("batch_real", "probe_per_class")
    models_working_memory = True

    def memory_breakdown(self, ds: ImageDataset, ipc: int, ctx: RunContext) -> dict[str, int]:
        """Bytes by term (docs/methods/condenser-memory.md): as DM (every class's real batch, no backward
        through it), plus the real batch's last-layer features and the probe batch."""
        from smallset.distill._memory import FLOAT, breakdown, real_rows
        from smallset.models import seeded_model

        cfg = self.config
        net = seeded_model(ctx.model, ds.channels, ds.num_classes, ds.image_size, 0, **(ctx.model_kwargs or {}))
        rows = real_rows(ds, cfg.batch_real, per_class=False)
        probe = real_rows(ds, cfg.probe_per_class, per_class=False)
        image = ds.channels * ds.image_size[0] * ds.image_size[1] * FLOAT
        extra = {"real features": rows * (int(getattr(net, "feature_dim", 0)) + ds.num_classes) * FLOAT,
                 "probe batch": 2 * probe * image}
        inner = min(cfg.batch_train, ds.num_classes * int(ipc))
        return breakdown(ds, ipc, ctx, batch_real=cfg.batch_real, per_class=False, real_backward=False,
                         dsa=cfg.dsa, syn_factor=1, inner_rows=inner, extra=extra)

    def extra_memory_bytes(self, ds: ImageDataset, budget: int, ctx: RunContext) -> int:
        return sum(self.memory_breakdown(ds, int(budget), ctx).values())

    def paper_recipe(self, dataset_key, channels, info):
        """CAFE+DSA: DSA and 1000 epochs; plain CAFE: DC's evaluation (CAFE's code copies DC's)."""
        if self.config.dsa:
            return super().paper_recipe(dataset_key, channels, info)
        return dc_paper_recipe(dataset_key)

    @classmethod
    def check_config(cls, cfg: CAFEConfig) -> None:
        """The declared ranges, then the rules between options and the lists to parse; the layer count against
        the model is checked in :meth:`setup`."""
        super().check_config(cfg)
        check_dsa_strategy(cfg)
        for cap in ("max_outer_steps", "max_inner_epochs"):
            if getattr(cfg, cap) < cfg.watch_window:
                raise SmallsetError(
                    f"{cap} ({getattr(cfg, cap)}) is below watch_window ({cfg.watch_window}): CAFE's dynamic stop "
                    f"rule could never fire and every loop would run a fixed {getattr(cfg, cap)} steps; raise "
                    f"{cap} to at least watch_window, or lower watch_window.", option=cap)
        if any(not (0.0 < f <= 1.0) for f in parse_floats(cfg.lr_halving, "lr_halving")):
            raise SmallsetError(f"lr_halving takes fractions of the iterations in (0, 1]; got {cfg.lr_halving!r}.",
                                option="lr_halving")
        if any(w < 0 for w in parse_floats(cfg.layer_weights, "layer_weights")):
            raise SmallsetError("layer_weights must not be negative.", option="layer_weights")

    def setup(self, ds: ImageDataset, ipc: int, ctx: RunContext) -> None:
        cfg = self.config
        self.milestones = [int(round(f * cfg.iterations)) for f in parse_floats(cfg.lr_halving, "lr_halving")]
        self.layer_weights = parse_floats(cfg.layer_weights, "layer_weights")
        setup_matching_state(self, ds, ipc, ctx, probe=5)
        self.augment = None
        if cfg.dsa:
            from smallset.augment import DSA

            self.augment = DSA(strategy=cfg.dsa_strategy or self.dsa_strategy_for(ds.channels, ds.dataset_key))
        self.carry = 1.0 / ds.num_classes if cfg.accumulator_quirk else 0.0
        self.stats: dict[str, list[float]] = {k: [] for k in (
            "outer_steps", "inner_epochs", "align_loss_curve", "last_loss_curve", "disc_loss_curve")}
        self.cap_hits = {"outer": 0, "inner": 0}

        net = self._new_net()  # fail early on a bad model, and check the layer weights fit it
        if not hasattr(net, "layer_outputs"):
            raise SmallsetError(
                f"CAFE aligns intermediate features and needs a model with layer_outputs (convnet, convnet-s); "
                f"{ctx.model!r} has none."
            )
        with torch.no_grad():
            n_layers = len(net.eval().layer_outputs(self.syn[:1].detach()))
        if len(self.layer_weights) != n_layers:
            raise SmallsetError(
                f"layer_weights gives {len(self.layer_weights)} weights but {ctx.model!r} has {n_layers} "
                f"feature layers; give one weight per layer (shallow to deep).", option="layer_weights"
            )

    def _new_net(self) -> nn.Module:
        return new_network(self)

    # -- pieces of one iteration -------------------------------------------------------------------
    def _image_step(self, net: nn.Module) -> tuple[float, float, float, float]:
        """One image step on L (docs/methods/cafe.md#cafe-losses); returns (total, align, last,
        discrimination) loss values."""
        cfg, k = self.config, self.num_classes
        xr, yr = self.sampler.batch_all(cfg.batch_real, self.generators["real"])
        xs = self.syn
        if self.augment is not None:
            xr, xs = self.augment.siamese_groups([xr, xs], [yr, self.labels], generator=self.generators["aug"],
                                                 num_groups=k)
        counts = torch.bincount(yr, minlength=k)
        step = chunk_for(self.device, net) or REAL_CHUNK  # small chunks on the CPU (distill/_streaming.py)
        with torch.no_grad():
            sums, f5_real = None, []
            for start in range(0, len(xr), step):
                outs = net.layer_outputs(xr[start:start + step])
                yb = yr[start:start + step]
                if sums is None:
                    sums = [torch.zeros((k,) + tuple(f.shape[1:]), dtype=f.dtype, device=f.device) for f in outs]
                for s, f in zip(sums, outs):
                    s.index_add_(0, yb, f)
                f5_real.append(outs[-1].flatten(1))
            mean_real = [s / counts.to(s.dtype).view((-1,) + (1,) * (s.ndim - 1)) for s in sums]
            f5_real = torch.cat(f5_real)
        feats_syn = net.layer_outputs(xs)
        mean_syn = [f.reshape((k, self.ipc) + tuple(f.shape[1:])).mean(1) for f in feats_syn]
        align = sum(w * (mr - ms).pow(2).sum() for w, mr, ms in zip(self.layer_weights, mean_real, mean_syn))
        centre_syn = mean_syn[-1].flatten(1)
        last = (centre_syn - mean_real[-1].flatten(1)).pow(2).sum()
        disc = F.cross_entropy(f5_real @ centre_syn.t(), yr, reduction="sum")
        loss = align + cfg.weight_last * last + cfg.weight_discrimination * disc
        grad = torch.autograd.grad(loss, self.syn)[0]
        self.opt.zero_grad(set_to_none=True)
        self.syn.grad = grad
        self.opt.step()
        return float(loss.detach()), float(align.detach()), float(last.detach()), float(disc.detach())

    @torch.no_grad()
    def _probe(self, net: nn.Module) -> float:
        """Mean per-class accuracy of ``net`` on ``probe_per_class`` fresh real images per class."""
        x, y = self.sampler.batch_all(self.config.probe_per_class, self.generators["probe"])
        step = chunk_for(self.device, net) or REAL_CHUNK
        correct = torch.cat([net(x[s:s + step]).argmax(1) for s in range(0, len(x), step)]) == y
        per_class = class_means(correct.float(), y, self.num_classes)
        return float(per_class.mean())

    def step(self, it: int) -> float:
        cfg = self.config
        lr = halved_lr(cfg.lr_img, it, self.milestones)
        for group in self.opt.param_groups:
            group["lr"] = lr
        net = self._new_net()
        opt_net = torch.optim.SGD(net.parameters(), lr=cfg.lr_net)
        augment = None
        if self.augment is not None:
            augment = lambda xb: self.augment(xb, generator=self.generators["aug"])  # noqa: E731
        outer = LoopWatcher(cfg.lambda1, "stable", cfg.watch_window, self.carry, cfg.max_outer_steps)
        parts, epochs = [], 0
        while True:
            parts.append(self._image_step(net))
            if outer.update(self._probe(net)):
                break
            inner = LoopWatcher(cfg.lambda2, "changed", cfg.watch_window, self.carry, cfg.max_inner_epochs)
            while True:
                train_on_synthetic(net, opt_net, self.syn, self.labels, 1, cfg.batch_train,
                                   self.generators["shuffle"], augment)
                epochs += 1
                if inner.update(self._probe(net)):
                    break
            self.cap_hits["inner"] += inner.reason == "cap"
        self.cap_hits["outer"] += outer.reason == "cap"
        n = len(parts)
        means = [sum(p[i] for p in parts) / n for i in range(4)]
        self.stats["outer_steps"].append(float(n))
        self.stats["inner_epochs"].append(float(epochs))
        self.stats["align_loss_curve"].append(means[1])
        self.stats["last_loss_curve"].append(means[2])
        self.stats["disc_loss_curve"].append(means[3])
        return means[0]

    # -- state and result --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = super().state_dict()
        state["stats"] = {k: list(v) for k, v in self.stats.items()}
        state["cap_hits"] = dict(self.cap_hits)
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.stats = {k: list(v) for k, v in state["stats"].items()}
        self.cap_hits = dict(state["cap_hits"])

    def result(self) -> Synthetic:
        info: dict = dict(self.stats)
        steps = self.stats["outer_steps"]
        if steps:
            info["mean_outer_steps"] = sum(steps) / len(steps)
            info["mean_inner_epochs"] = sum(self.stats["inner_epochs"]) / len(steps)
        info["outer_cap_hits"] = float(self.cap_hits["outer"])
        info["inner_cap_hits"] = float(self.cap_hits["inner"])
        info["mean_abs_change"] = float((self.syn.detach().cpu() - self.init_images).abs().mean())
        return Synthetic(images=self.syn.detach().cpu().clone(), labels=self.labels.cpu().clone(), info=info)
