"""The condenser interface and registry.

A condenser learns ``ipc`` synthetic images per class. It works in the normalised space the models
train in (condensation-methods.md §1.1) and returns :class:`Synthetic`; :func:`to_dataset` turns that
into an :class:`~smallset.data.ImageDataset` in pixel scale (exact floats, possibly outside [0, 1]) so it
is stored, evaluated and reloaded like any other dataset.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from smallset.context import RunContext
from smallset.data import ImageDataset
from smallset.errors import SmallsetError
from smallset.registry import Registry
from smallset.prune.base import NoConfig, config_to_dict


@dataclass
class Synthetic:
    images: torch.Tensor  # float32 (classes·ipc)×C×H×W, normalised space, class-major order
    labels: torch.Tensor  # int64, fixed hard labels
    weights: torch.Tensor | None = None  # optional learned per-image loss weights
    lrs: torch.Tensor | None = None  # optional learned per-image learning rates
    info: dict[str, Any] = field(default_factory=dict)  # loss curve, iterations/second, …


class Condenser:
    """Base class: the iteration loop, checkpoints, resume and the progress bar live here.

    Subclasses set ``config_cls`` (a dataclass with the paper's defaults, optionally a ``for_ipc``
    classmethod and an ``iterations`` field) and implement three hooks:

    - :meth:`setup` creates the state of a run (``self.syn``, the image optimiser, generators…);
    - :meth:`step` runs outer iteration ``it`` and returns its loss;
    - :meth:`result` returns the :class:`Synthetic` set.

    All randomness must come from ``self.generators`` (named ``torch.Generator`` objects made in
    ``setup``; networks are initialised from one with :func:`smallset.models.seeded_model`), never from the
    global torch RNG, which other threads share. The generators are saved in every checkpoint, so a resumed
    run continues exactly where the interrupted one stopped. Tensors/optimisers to checkpoint are listed by
    :meth:`state_dict` (default: ``self.syn`` and ``self.opt``; extend it for more state).
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "distill"
    config_cls: ClassVar[type] = NoConfig

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.config_cls()
        self.generators: dict[str, torch.Generator] = {}

    @classmethod
    def config_for_ipc(cls, ipc: int, **overrides) -> Any:
        """The paper's defaults for this ipc, with ``overrides`` applied (None values ignored)."""
        base = cls.config_cls.for_ipc(ipc) if hasattr(cls.config_cls, "for_ipc") else cls.config_cls()
        for k, v in overrides.items():
            if v is not None:
                setattr(base, k, v)
        return base

    def params(self) -> dict:
        return config_to_dict(self.config)

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

    def condense(self, ds: ImageDataset, ipc: int, ctx: RunContext) -> Synthetic:
        import time

        ipc = check_ipc(ipc, ds)
        self.setup(ds, ipc, ctx)
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
        for it in its:
            loss = float(self.step(it))
            losses.append(loss)
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.4g}")
            if ckpt is not None and ctx.checkpoint_every and (it + 1) % ctx.checkpoint_every == 0 and it + 1 < total:
                self._save_checkpoint(ckpt, it + 1, losses)
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
        import os
        import tempfile

        state = {
            "iteration": iteration,
            "losses": list(losses),
            "method": self.name,
            "config": self.params(),
            "state": self.state_dict(),
            "generators": {k: g.get_state() for k, g in self.generators.items()},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".ckpt.", dir=path.parent)
        os.close(fd)
        try:
            torch.save(state, tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _load_checkpoint(self, path: Path) -> tuple[int, list[float]]:
        state = torch.load(path, map_location="cpu", weights_only=False)
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
    def deco(cls: type[Condenser]) -> type[Condenser]:
        cls.name = name
        return CONDENSERS.register(name)(cls)

    return deco


def check_ipc(ipc: int, ds: ImageDataset) -> int:
    try:
        ipc = int(ipc)
    except (TypeError, ValueError):
        raise SmallsetError(f"--ipc must be a whole number, not {ipc!r}.") from None
    smallest = min(ds.class_counts()) if len(ds) else 0
    if ipc < 1 or ipc > smallest:
        raise SmallsetError(
            f"--ipc must lie between 1 and {smallest} (the smallest class of the source); got {ipc}."
        )
    return ipc


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


def init_synthetic(ds: ImageDataset, ipc: int, init: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-major synthetic tensor (normalised space): ``real`` copies ipc random images per class,
    ``noise`` draws N(0, 1) (§1.2)."""
    c, (h, w) = ds.channels, ds.image_size
    labels = torch.arange(ds.num_classes).repeat_interleave(ipc)
    if init == "noise":
        return torch.randn(ds.num_classes * ipc, c, h, w, generator=generator), labels
    if init == "real":
        x = ds.normalized()
        picks = [idx[torch.randperm(len(idx), generator=generator)[:ipc]] for idx in ds.class_indices()]
        return x[torch.cat(picks)].clone(), labels
    raise SmallsetError(f"Unknown init {init!r}; use real or noise.")
