"""The condenser interface and registry.

A condenser learns ``ipc`` synthetic images per class. It works in the normalised space the models
train in (docs/methods/dc.md#condensation-data) and returns :class:`Synthetic`; :func:`to_dataset` turns
that into an :class:`~smallset.data.ImageDataset` in pixel scale (exact floats, possibly outside [0, 1]) so
it is stored, evaluated and reloaded like any other dataset.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from smallset.budget import IPC, BudgetUnit
from smallset.context import RunContext
from smallset.data import ImageDataset
from smallset.errors import SmallsetError
from smallset.interrupt import check_stop
from smallset.method import Method, Prepared, Reduction, register_method
from smallset.registry import Registry
from smallset.train import Protocol, get_protocol


@dataclass
class Synthetic:
    images: torch.Tensor  # float32 (classes·ipc)×C×H×W, normalised space, class-major order
    labels: torch.Tensor  # int64, fixed hard labels
    weights: torch.Tensor | None = None  # optional learned per-image loss weights
    lrs: torch.Tensor | None = None  # optional learned per-image learning rates
    info: dict[str, Any] = field(default_factory=dict)  # loss curve, iterations/second, …


class Condenser(Method):
    """Base class of condensers: implement :meth:`condense` (a closed-form condenser needs nothing else);
    :class:`IterativeCondenser` adds the iteration loop, checkpoints and exact resume.

    Subclasses set ``config_cls`` (a dataclass with the paper's defaults, optionally a ``for_ipc``
    classmethod)."""

    kind: ClassVar[str] = "distill"
    budget_unit: ClassVar[BudgetUnit] = IPC
    assumed_real_batch_per_class: ClassVar[int] = 256

    @classmethod
    def default_config(cls, budget: int | None = None) -> Any:
        """The paper's defaults for this ipc (the config's ``for_ipc`` when it has one)."""
        if budget is not None and hasattr(cls.config_cls, "for_ipc"):
            return cls.config_cls.for_ipc(int(budget))
        return cls.config_cls()

    @classmethod
    def config_for_ipc(cls, ipc: int, **overrides) -> Any:
        """The paper's defaults for this ipc, with ``overrides`` applied (None values ignored)."""
        return cls.make_config(overrides, ipc)

    def condense(self, ds: ImageDataset, ipc: int, ctx: RunContext, prepared: Prepared | None = None) -> Synthetic:
        """``ipc`` synthetic images per class (normalised space) from ``ds`` and the prepared state."""
        raise NotImplementedError

    def reduce(self, ds: ImageDataset, budget: int, ctx: RunContext, prepared: Prepared | None = None) -> Reduction:
        ipc = check_ipc(budget, ds)
        self.check_config(self.config)  # make_config checked it already; a config built by hand is checked here
        state = self.state_for(ds, ctx, prepared)
        syn = self.condense(ds, ipc, ctx, state)
        out = to_dataset(syn, ds)
        for what, t in (("images", out.images), ("weights", out.weights)):
            if t is not None and not bool(torch.isfinite(t).all()):
                raise self.diverged(f"its synthetic {what} hold NaN or infinite values")
        return Reduction(out, {**state.info, **syn.info})

    # The config fields to lower when the condensation diverges (named in the error sentence).
    divergence_options: ClassVar[tuple[str, ...]] = ("lr_img",)

    def diverged(self, what: str, checkpoint: str = "") -> SmallsetError:
        """The one sentence for a condensation that produced a non-finite loss or image."""
        names = [n for n in self.divergence_options if hasattr(self.config, n)]
        lower = " or ".join(f"{n} (now {getattr(self.config, n):g})" for n in names) or "its learning rate"
        return SmallsetError(f"{self.name} diverged: {what}. Lower {lower} and run again; no dataset was "
                             f"written{checkpoint}.", option=names[0] if names else None)

    def dsa_strategy_for(self, channels: int, dataset_key: str | None) -> str:
        """The DSA strategy this method augments with when ``dsa_strategy`` is not given: the reference's for
        the data (methods whose paper uses another override this)."""
        from smallset.augment import default_strategy

        return default_strategy(channels, dataset_key)

    def paper_recipe(self, dataset_key: str | None, channels: int, info: dict) -> Protocol:
        """The condensation papers' evaluate_synset with DSA augmentation, 1000 epochs (DSA, DM, CAFE+DSA):
        the strategy the method condensed with (docs/methods/evaluation.md#evaluation-protocol)."""
        strategy = getattr(self.config, "dsa_strategy", "") or self.dsa_strategy_for(channels, dataset_key)
        return get_protocol("paper-1000", augment=f"dsa:{strategy}")


class IterativeCondenser(Condenser):
    """Capability: a condenser that learns its images over iterations. The iteration loop, checkpoints,
    exact resume and the progress bar live here.

    Subclasses' configs carry an ``iterations`` field; they implement three hooks:

    - :meth:`setup` creates the state of a run (``self.syn``, the image optimiser, generators…);
    - :meth:`step` runs outer iteration ``it`` and returns its loss;
    - :meth:`result` returns the :class:`Synthetic` set.

    All randomness must come from ``self.generators`` (named ``torch.Generator`` objects made in
    ``setup``; networks are initialised from one with :func:`smallset.models.seeded_model`), never from the
    global torch RNG, which other threads share. The generators are saved in every checkpoint, so a resumed
    run continues exactly where the interrupted one stopped. Tensors/optimisers to checkpoint are listed by
    :meth:`state_dict` (default: ``self.syn`` and ``self.opt``; extend it for more state).
    """

    def __init__(self, config: Any = None):
        super().__init__(config)
        self.generators: dict[str, torch.Generator] = {}

    def check_finite(self, it: int, loss: float, ckpt: Path | None, saved: int) -> None:
        """Stop at the first non-finite loss or synthetic image (before it can reach a checkpoint)."""
        syn = getattr(self, "syn", None)
        if not math.isfinite(loss):
            what = f"the loss is {loss} at iteration {it + 1}"
        elif isinstance(syn, torch.Tensor) and not bool(torch.isfinite(syn.detach()).all()):
            what = f"the synthetic images hold NaN or infinite values at iteration {it + 1}"
        else:
            return
        kept = f"; the last finite checkpoint (iteration {saved}) is kept in {ckpt.parent}" if ckpt and saved else ""
        raise self.diverged(what, kept)

    # --- hooks ------------------------------------------------------------------------------
    def setup(self, ds: ImageDataset, ipc: int, ctx: RunContext) -> None:
        raise NotImplementedError

    def step(self, it: int) -> float:
        raise NotImplementedError

    def result(self) -> Synthetic:
        raise NotImplementedError

    def state_dict(self) -> dict:
        state = {"syn": self.syn.detach().clone()}
        if getattr(self, "opt", None) is not None:
            state["opt"] = self.opt.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.syn.copy_(state["syn"])
        if "opt" in state:
            self.opt.load_state_dict(state["opt"])

    # --- the loop ---------------------------------------------------------------------------
    def iterations(self) -> int:
        return int(getattr(self.config, "iterations", 1))

    def condense(self, ds: ImageDataset, ipc: int, ctx: RunContext, prepared: Prepared | None = None) -> Synthetic:
        import time

        ipc = check_ipc(ipc, ds)
        self.check_config(self.config)  # make_config checked it already; a config built by hand is checked here
        try:
            self.setup(ds, ipc, ctx)
        except ValueError as e:  # e.g. torch.optim's "Invalid momentum value: -1.0"
            raise SmallsetError(f"{self.name} cannot start with these options: {e}.") from None
        total = self.iterations()
        start, losses = 0, []
        ckpt = Path(ctx.checkpoint_dir) / "checkpoint.pt" if ctx.checkpoint_dir else None
        if ctx.resume and ckpt is not None and ckpt.exists():
            start, losses = self._load_checkpoint(ckpt)
        bar = None
        its = range(start, total)
        if ctx.progress:
            from tqdm.auto import tqdm

            bar = tqdm(its, desc=self.name, unit="it", initial=start, total=total, leave=False, mininterval=0.5,
                       disable=None)
            its = bar
        t0 = time.perf_counter()
        saved = start
        for it in its:
            check_stop()
            loss = float(self.step(it))
            self.check_finite(it, loss, ckpt, saved)
            losses.append(loss)
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.4g}")
            if ckpt is not None and ctx.checkpoint_every and (it + 1) % ctx.checkpoint_every == 0 and it + 1 < total:
                self._save_checkpoint(ckpt, it + 1, losses)
                saved = it + 1
        seconds = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        out = self.result()
        done = total - start
        out.info.setdefault("loss_curve", losses)
        out.info["iterations"] = total
        out.info["resumed_from"] = start
        out.info["seconds"] = seconds
        out.info["iterations_per_second"] = done / seconds if seconds > 0 and done else float("nan")
        return out

    def _save_checkpoint(self, path: Path, iteration: int, losses: list[float]) -> None:
        from smallset.atomic import write_atomic

        state = {
            "iteration": iteration,
            "losses": list(losses),
            "method": self.name,
            "config": self.params(),
            "state": self.state_dict(),
            "generators": {k: g.get_state() for k, g in self.generators.items()},
        }
        write_atomic(path, lambda tmp: torch.save(state, tmp), option="checkpoint_dir")

    def _load_checkpoint(self, path: Path) -> tuple[int, list[float]]:
        try:  # tensors and plain types only: a crafted checkpoint cannot run code (no pickle of objects)
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises several types for a bad or unsafe file
            raise SmallsetError(f"The checkpoint {path} cannot be read safely ({type(e).__name__}); "
                                f"delete it to start afresh.") from None
        if state.get("method") != self.name or state.get("config") != self.params():
            raise SmallsetError(
                f"The checkpoint in {path.parent} was made by another method or other settings; "
                f"resume with the same options or delete it."
            )
        self.load_state_dict(state["state"])
        for k, g_state in state["generators"].items():
            self.generators[k].set_state(g_state)
        return int(state["iteration"]), list(state["losses"])

CONDENSERS: Registry[type[Condenser]] = Registry("distillation method")


def register_condenser(name: str):
    return register_method(CONDENSERS, name)


def check_ipc(ipc: int, ds: ImageDataset) -> int:
    """An ipc the data can give: a whole number between 1 and the smallest class."""
    return IPC.check_fits(ipc, ds.class_counts())


def to_dataset(syn: Synthetic, source: ImageDataset) -> ImageDataset:
    """Synthetic images (normalised) → pixel-scale dataset with ``source_index`` −1 for every row."""
    mean = torch.tensor(source.mean).view(1, -1, 1, 1)
    std = torch.tensor(source.std).view(1, -1, 1, 1)
    images = (syn.images.detach().float().cpu() * std + mean).contiguous()
    n = len(syn.labels)
    return ImageDataset(
        images=images,
        labels=syn.labels.detach().cpu().long(),
        classes=list(source.classes),
        mean=source.mean,
        std=source.std,
        weights=None if syn.weights is None else syn.weights.detach().float().cpu(),
        source_index=torch.full((n,), -1, dtype=torch.long),
        name=source.name,
    )


def init_synthetic(ds: ImageDataset, ipc: int, init: str, generator: torch.Generator) -> tuple[torch.Tensor,
                                                                                               torch.Tensor]:
    """Class-major synthetic tensor (normalised space): ``real`` copies ipc random images per class,
    ``noise`` draws N(0, 1) (docs/methods/dc.md#synthetic-set)."""
    c, (h, w) = ds.channels, ds.image_size
    labels = torch.arange(ds.num_classes).repeat_interleave(ipc)
    if init == "noise":
        return torch.randn(ds.num_classes * ipc, c, h, w, generator=generator), labels
    if init == "real":
        from smallset.distill._streaming import PixelRows

        picks = [idx[torch.randperm(len(idx), generator=generator)[:ipc]] for idx in ds.class_indices()]
        # Only the picked rows are normalised (the same values as ds.normalized()[rows], without a
        # normalised copy of the whole set at the peak of setup).
        return PixelRows(ds.images, ds.mean, ds.std, "cpu").rows(torch.cat(picks)).clone(), labels
    raise SmallsetError(f"Unknown init {init!r}; use real or noise.")
