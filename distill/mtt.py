"""MTT — Dataset Distillation by Matching Training Trajectories (Cazenavette et al., CVPR 2022).

``prepare()`` trains expert networks on the real data and caches their parameters after every epoch
(:mod:`smallset.distill._experts`). Every iteration then picks an expert and a start epoch t, trains a
student from the expert's parameters θ*_t for ``syn_steps`` differentiable SGD steps on the synthetic set
(DSA-augmented, step size the learned α), and moves the images and α to minimise
‖θ̂ − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖². DATM's difficulty-aligned start range is available as options.

Rationale, the paper's recipe and our deviations: docs/methods/mtt.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from smallset.augment import DSA
from smallset.config import option
from smallset.context import RunContext
from smallset.data import ImageDataset
from smallset.distill._experts import ExpertBuffer, ExpertRecipe, buffer_dir, ensure_experts, param_shapes
from smallset.distill._matching import check_dsa_strategy
from smallset.distill.base import IterativeCondenser, Synthetic, init_synthetic, register_condenser
from smallset.errors import SmallsetError
from smallset.method import Prepared
from smallset.models import seeded_model

# The paper's CIFAR-10 rows (docs/methods/mtt.md#mtt-hyperparameters): ipc → (syn_steps N, expert_epochs M,
# max_start_epoch T⁺, lr_img, lr_lr, lr_teacher α₀). The paper ran ipc 1 and 10 on ZCA-whitened data, which we
# do not implement; lr_img is the non-ZCA value (see the docs).
CIFAR10_ROWS: dict[int, tuple[int, int, int, float, float, float]] = {
    1: (50, 2, 2, 1000.0, 1e-7, 0.01),
    10: (30, 2, 20, 1000.0, 1e-5, 0.01),
    50: (30, 2, 40, 1000.0, 1e-5, 0.001),
}


def row_for_ipc(ipc: int) -> int:
    """The table row used for ``ipc``: 1 → 1, 2–49 → 10, from 50 → 50."""
    return 1 if ipc <= 1 else (10 if ipc < 50 else 50)


@dataclass
class MTTConfig:
    """MTT hyper-parameters (docs/methods/mtt.md#mtt-hyperparameters): the paper's CIFAR-10 rows per ipc
    (:meth:`for_ipc`; the plain defaults are the ipc-10 row) and its expert recipe."""

    iterations: int = option(5000, "outer iterations (reference --Iteration)", ge=1)
    syn_steps: int = option(30, "N: differentiable SGD steps of the student on the synthetic set per iteration; "
                                "memory grows linearly with it", ge=1)
    expert_epochs: int = option(2, "M: the target is the expert's parameters M epochs after the start", ge=1)
    max_start_epoch: int = option(20, "T⁺: start epochs are drawn from [min_start_epoch, T⁺), upper bound exclusive "
                                      "as in the reference", ge=1)
    min_start_epoch: int = option(0, "DATM's lower bound T⁻ on the start epoch (0 = MTT)", ge=0)
    initial_max_start_epoch: int = option(0, "DATM sequential generation: the start-epoch upper bound grows "
                                             "linearly from this to max_start_epoch over expansion_iterations "
                                             "(0 = off, MTT)", ge=0)
    expansion_iterations: int = option(0, "DATM sequential generation: iterations over which the upper bound grows",
                                       ge=0)
    lr_img: float = option(1000.0, "SGD learning rate of the synthetic images", gt=0)
    lr_lr: float = option(1e-5, "SGD learning rate of the learned student step size α", ge=0)
    lr_teacher: float = option(0.01, "α₀, the initial learned student step size (reference --lr_teacher of distill.py)",
                               gt=0)
    momentum: float = option(0.5, "SGD momentum of the images and of α (reference: 0.5)", ge=0, lt=1)
    batch_syn: int = option(0, "synthetic images per student step (0 = the whole set, the reference default); "
                               "memory grows linearly with it", ge=0)
    init: Literal["real", "noise"] = option("real", "initialise from real images or N(0,1) noise")
    dsa: bool = option(True, "DSA augmentation (a fresh non-Siamese draw) on every student step")
    dsa_strategy: str = option("", "DSA strategy of the experts and the student; empty = the reference's for "
                                   "the data (all six families; no flip on MNIST-like digits)", prepare=True)
    # --- the expert recipe (reference buffer.py), the cached preparation --------------------------------
    num_experts: int = option(100, "expert trajectories to train (and sample from)", prepare=True, ge=1)
    train_epochs: int = option(50, "epochs per expert; a snapshot of the parameters after each", prepare=True, ge=1)
    expert_lr: float = option(0.01, "SGD learning rate of the experts (no momentum, no weight decay)", prepare=True,
                              gt=0)
    expert_batch: int = option(256, "mini-batch size of the experts", prepare=True, ge=1)
    expert_dsa: bool = option(True, "DSA augmentation of the experts' mini-batches (reference: on)", prepare=True)

    @classmethod
    def for_ipc(cls, ipc: int) -> "MTTConfig":
        """The paper's CIFAR-10 row for this ipc (:func:`row_for_ipc`)."""
        n, m, t, lr_img, lr_lr, lr_teacher = CIFAR10_ROWS[row_for_ipc(int(ipc))]
        return cls(syn_steps=n, expert_epochs=m, max_start_epoch=t, lr_img=lr_img, lr_lr=lr_lr,
                   lr_teacher=lr_teacher)


# --- the pieces, as plain functions (tests/test_mtt.py checks each by hand) ------------------------------
class FlatModel:
    """A network used functionally on one flat parameter vector (the reference's ReparamModule)."""

    def __init__(self, net: nn.Module):
        self.net = net
        shapes = param_shapes(net)
        self.names = list(shapes)
        self.shapes = [torch.Size(s) for s in shapes.values()]
        self.sizes = [s.numel() for s in self.shapes]
        self.numel = sum(self.sizes)

    def params(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: p.view(s) for n, p, s in zip(self.names, torch.split(flat, self.sizes), self.shapes)}

    def __call__(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.net, self.params(flat), (x,))


def unroll(model: FlatModel, start: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, lr: torch.Tensor,
           batches: Sequence[torch.Tensor], augment: Callable[[torch.Tensor], torch.Tensor] | None = None
           ) -> torch.Tensor:
    """θ_N after one SGD step θ_n = θ_{n−1} − α·∇θ CE(f(aug(x_b); θ_{n−1}), y_b) per index batch ``b``, the
    graph kept (``create_graph``) so θ_N is differentiable in the images and α."""
    theta = start if start.requires_grad else start.detach().requires_grad_(True)
    for idx in batches:
        x = images[idx]
        if augment is not None:
            x = augment(x)
        ce = F.cross_entropy(model(theta, x), labels[idx])
        grad = torch.autograd.grad(ce, theta, create_graph=True)[0]
        theta = theta - lr * grad
    return theta


def trajectory_loss(theta: torch.Tensor, start: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """‖θ̂ − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖² (the reference's 1/num_params factors cancel)."""
    return ((theta - target) ** 2).sum() / ((start - target) ** 2).sum()


def student_batches(n: int, batch: int, steps: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Index batches of ``steps`` student steps: successive chunks of ``batch`` from random permutations of
    the ``n`` synthetic images, a new permutation whenever one is used up, taken from the end as the
    reference's ``indices_chunks.pop()``."""
    out: list[torch.Tensor] = []
    chunks: list[torch.Tensor] = []
    for _ in range(steps):
        if not chunks:
            chunks = list(torch.split(torch.randperm(n, generator=generator), batch))
        out.append(chunks.pop())
    return out


def start_epoch_bound(cfg: MTTConfig, it: int) -> int:
    """The exclusive upper bound of the start epoch at iteration ``it`` (DATM's growing bound when on)."""
    if cfg.initial_max_start_epoch > 0 and cfg.expansion_iterations > 0:
        grown = cfg.initial_max_start_epoch + int(
            (cfg.max_start_epoch - cfg.initial_max_start_epoch) * it / cfg.expansion_iterations)
        return min(grown, cfg.max_start_epoch)
    return cfg.max_start_epoch


FLOAT = 4  # bytes per float32
# Peak resident set of a whole CPU run over the graph's size (benchmarks/mtt_memory.py --malloc default, bench_mtt.py)
CPU_HEAP_RETENTION = 1.45


@register_condenser("mtt")
class MTTCondenser(IterativeCondenser):
    """Matching training trajectories (docs/methods/mtt.md)."""

    config_cls = MTTConfig
    uses_model = True  # the experts are trained with ctx.model: the preparation cache key includes it
    memory_options = ("syn_steps", "batch_syn")
    models_working_memory = True  # extra_memory_bytes is all of it: MTT holds no real batches while distilling
    divergence_options = ("lr_img", "lr_lr")
    # smallset demo (mnist-mini, ipc 10, convnet-s, 2 quiet CPU cores): experts ≈ 9 s, 25 iterations ≈ 8 s
    demo = {"iterations": 25, "num_experts": 2, "train_epochs": 2, "syn_steps": 6, "expert_epochs": 1,
            "max_start_epoch": 2, "batch_syn": 50}
    smoke = {"iterations": 4, "num_experts": 2, "train_epochs": 2, "syn_steps": 2, "expert_epochs": 1,
             "max_start_epoch": 2, "expert_batch": 8, "lr_img": 10.0, "lr_lr": 1e-3}

    def __init__(self, config=None):
        super().__init__(config)
        self._buffer: ExpertBuffer | None = None

    # --- configuration checks ----------------------------------------------------------------------
    def _strategy(self, ds: ImageDataset) -> str:
        """The DSA strategy of experts and student: ``dsa_strategy`` or the reference's for the data."""
        return self.config.dsa_strategy or self.dsa_strategy_for(ds.channels, ds.dataset_key)

    def _recipe(self, ds: ImageDataset) -> ExpertRecipe:
        c = self.config
        strategy = self._strategy(ds) if c.expert_dsa else "none"
        return ExpertRecipe(epochs=c.train_epochs, lr=c.expert_lr, batch_size=c.expert_batch, dsa_strategy=strategy)

    @classmethod
    def check_config(cls, config: MTTConfig) -> None:
        """The declared ranges, then the rules between the start epochs and the experts' length."""
        super().check_config(config)
        c = config
        check_dsa_strategy(c)
        lowest_bound = min(c.max_start_epoch, c.initial_max_start_epoch or c.max_start_epoch)
        if c.min_start_epoch >= lowest_bound:
            raise SmallsetError(f"min_start_epoch must lie below max_start_epoch (and initial_max_start_epoch when "
                                f"set); got {c.min_start_epoch} ≥ {lowest_bound}.", option="min_start_epoch")
        if c.max_start_epoch - 1 + c.expert_epochs > c.train_epochs:
            raise SmallsetError(
                f"max_start_epoch − 1 + expert_epochs must be at most train_epochs (the experts' last snapshot); got "
                f"{c.max_start_epoch} − 1 + {c.expert_epochs} > {c.train_epochs}: lower max_start_epoch or "
                f"expert_epochs, or train longer experts.", option="max_start_epoch")

    # --- the cached phase: expert trajectories ------------------------------------------------------
    def prepare(self, ds: ImageDataset, ctx: RunContext) -> Prepared:
        """Train (or find in the cache) ``num_experts`` expert trajectories: their handle, with their manifest
        and the seconds their training took as run information."""
        self.check_config(self.config)
        buffer = ensure_experts(ds, ctx, self._recipe(ds), self.config.num_experts, what=f"{self.name} experts")
        manifest = {**buffer.manifest, "experts_used": buffer.experts, "path": buffer.path}
        return Prepared(buffer, {
            "expert_manifest": manifest,
            "expert_seconds": float(sum(manifest.get("seconds_per_expert", [])[: buffer.experts])),
        })

    def use_experts(self, buffer: ExpertBuffer | None) -> None:
        """Condense from ``buffer`` (what :meth:`prepare` returned) instead of preparing in :meth:`setup`; a
        buffer of other settings, or one deleted from the cache since, is ignored."""
        self._buffer = buffer if isinstance(buffer, ExpertBuffer) else None

    def condense(self, ds: ImageDataset, ipc: int, ctx: RunContext, prepared: Prepared | None = None) -> Synthetic:
        self.use_experts(prepared.value if prepared is not None else None)
        return super().condense(ds, ipc, ctx, prepared)

    def _experts_for(self, ds: ImageDataset, ctx: RunContext) -> ExpertBuffer:
        """The handed-in buffer when it is this run's and still on disk, else :meth:`prepare`."""
        buf = self._buffer
        if buf is not None:
            _, _, h = buffer_dir(ds, ctx, self._recipe(ds))
            if buf.key_hash == h and buf.experts >= self.config.num_experts and buf.available():
                return buf
        return self.prepare(ds, ctx).value

    # --- memory (the pre-run estimate adds this) --------------------------------------------------------
    def graph_bytes(self, ds: ImageDataset, budget: int, ctx: RunContext) -> int:
        """Bytes of the unrolled student graph, held until the backward pass (docs/methods/mtt.md#mtt-memory):
        per student step the new parameter vector θ_n, its gradient ∇θ_n and α·∇θ_n (3·P floats) plus the
        activations of ``batch_syn`` images kept for the create_graph backward (1.5 × the forward outputs,
        calibrated) and the augmented input batch; plus the synthetic set with its gradient and momentum,
        and the start/target parameter vectors."""
        from smallset.estimate import activation_bytes

        c = self.config
        n_syn = ds.num_classes * int(budget)
        batch = min(c.batch_syn or n_syn, n_syn)
        net = seeded_model(ctx.model, ds.channels, ds.num_classes, ds.image_size, 0, **(ctx.model_kwargs or {}))
        params = sum(p.numel() for p in net.parameters())
        probe = ds.normalized()[: min(8, len(ds))]
        act_per_image = activation_bytes(net, probe) / max(1, len(probe))
        image = ds.channels * ds.image_size[0] * ds.image_size[1] * FLOAT
        # 1.5 × the forward outputs: measured peaks of one step were 1.45–1.5 × (forward outputs · batch · steps)
        # on ConvNet-3 (CPU, freed memory returned at once; docs/methods/mtt.md#mtt-memory); the in-place ReLU
        # outputs are counted by the probe but share their input's memory.
        per_step = 3 * params * FLOAT + batch * (1.5 * act_per_image + image)
        return int(c.syn_steps * per_step + 3 * n_syn * image + 3 * params * FLOAT)

    def extra_memory_bytes(self, ds: ImageDataset, budget: int, ctx: RunContext) -> int:
        """What the process holds for the unrolled graph: :meth:`graph_bytes`, on the CPU × the heap's
        retention (glibc keeps freed blocks of one iteration's graph and the next one only partly reuses them;
        measured 1.38–1.43 × over a whole run, docs/methods/mtt.md#mtt-memory). Other devices: unmeasured, × 1."""
        graph = self.graph_bytes(ds, budget, ctx)
        return int(graph * CPU_HEAP_RETENTION) if torch.device(ctx.device).type == "cpu" else graph

    # --- the condenser hooks ----------------------------------------------------------------------------
    def setup(self, ds: ImageDataset, ipc: int, ctx: RunContext) -> None:
        cfg = self.config
        self.ctx, self.ipc = ctx, ipc
        self.device = torch.device(ctx.device)
        self.buffer = self._experts_for(ds, ctx)
        self.trajectories = [self.buffer.load(i) for i in range(cfg.num_experts)]  # mmap'ed, paged in on use
        self.generators = {
            "init": ctx.generator(501),
            "expert": ctx.generator(502),
            "start": ctx.generator(503),
            "batch": ctx.generator(504),
            "aug": ctx.generator(505),
        }
        self.strategy = self._strategy(ds) if cfg.dsa else "none"
        self.dsa = DSA(self.strategy) if cfg.dsa else None
        net = seeded_model(ctx.model, ds.channels, ds.num_classes, ds.image_size, 0, **(ctx.model_kwargs or {}))
        self.model = FlatModel(net.to(self.device).train())
        if self.model.numel != self.trajectories[0].shape[1]:
            raise SmallsetError(f"The expert trajectories in {self.buffer.path} have {self.trajectories[0].shape[1]} "
                                f"parameters, the model {self.model.numel}; delete that directory.")
        syn, labels = init_synthetic(ds, ipc, cfg.init, self.generators["init"])
        self.syn = syn.to(self.device).requires_grad_(True)
        self.labels = labels.to(self.device)
        self.syn_lr = torch.tensor(float(cfg.lr_teacher), device=self.device).requires_grad_(True)
        self.opt = torch.optim.SGD([self.syn], lr=cfg.lr_img, momentum=cfg.momentum)
        self.opt_lr = torch.optim.SGD([self.syn_lr], lr=cfg.lr_lr, momentum=cfg.momentum)
        self.batch = min(cfg.batch_syn or len(self.syn), len(self.syn))
        self.lr_curve: list[float] = []
        self.start_epochs: list[int] = []
        self.expert_picks: list[int] = []

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        return self.dsa(x, self.generators["aug"])

    def step(self, it: int) -> float:
        cfg = self.config
        e = int(torch.randint(0, cfg.num_experts, (1,), generator=self.generators["expert"]))
        t = int(torch.randint(cfg.min_start_epoch, start_epoch_bound(cfg, it), (1,),
                              generator=self.generators["start"]))
        traj = self.trajectories[e]
        start = traj[t].to(self.device, torch.float32)
        target = traj[t + cfg.expert_epochs].to(self.device, torch.float32)
        batches = student_batches(len(self.syn), self.batch, cfg.syn_steps, self.generators["batch"])
        theta = unroll(self.model, start, self.syn, self.labels, self.syn_lr,
                       [b.to(self.device) for b in batches], self._augment if self.dsa is not None else None)
        loss = trajectory_loss(theta, start, target)  # a non-finite loss stops the run (Condenser.check_finite)
        self.opt.zero_grad(set_to_none=True)
        self.opt_lr.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.opt_lr.step()
        self.lr_curve.append(float(self.syn_lr.detach()))
        self.start_epochs.append(t)
        self.expert_picks.append(e)
        return float(loss.detach())

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update(syn_lr=self.syn_lr.detach().clone(), opt_lr=self.opt_lr.state_dict(),
                     lr_curve=list(self.lr_curve), start_epochs=list(self.start_epochs),
                     expert_picks=list(self.expert_picks))
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.syn_lr.copy_(state["syn_lr"])
        self.opt_lr.load_state_dict(state["opt_lr"])
        self.lr_curve = [float(v) for v in state["lr_curve"]]
        self.start_epochs = [int(v) for v in state["start_epochs"]]
        self.expert_picks = [int(v) for v in state["expert_picks"]]

    def result(self) -> Synthetic:
        learned = float(self.syn_lr.detach())
        info = {  # the experts' manifest and seconds are the preparation's information (prepare)
            "learned_lr": learned,
            "syn_lr_curve": list(self.lr_curve),
            "start_epoch_curve": list(self.start_epochs),
            "dsa_strategy": self.strategy,
            "init": self.config.init,
        }
        if not math.isfinite(learned) or learned <= 0:
            info["learned_lr_warning"] = "the learned step size is not positive; evaluate with a fixed lr"
        return Synthetic(images=self.syn.detach().cpu().clone(), labels=self.labels.detach().cpu().clone(), info=info)

    def paper_recipe(self, dataset_key, channels, info):
        """MTT's evaluate_synset: the condensation papers' DSA recipe (1000 epochs, SGD momentum 0.9, wd 5e-4,
        lr ×0.1 at half) with the learned step size α as the learning rate (docs/methods/mtt.md#mtt-evaluation);
        the fixed 0.01 when α is missing or not positive."""
        from dataclasses import replace

        protocol = super().paper_recipe(dataset_key, channels, info)
        lr = info.get("learned_lr") if info else None
        if isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0:
            protocol = replace(protocol, lr=float(lr))
        return protocol
