"""Before a long run: expected peak memory and a rough time per epoch, from a short timed probe.

Memory model (bytes, float32): the training split twice (pixel scale and the normalised copy on the
device) + the model four times (weights, gradients, momentum, a spare copy) + the activations of one
mini-batch, measured on a probe forward pass with hooks and doubled for the backward pass, scaled to the
batch size; a method's own memory (``Method.extra_memory_bytes``) is added, and a method whose own model covers
its whole working memory (``Method.models_working_memory``: DM, DC, DSA and CAFE,
docs/methods/condenser-memory.md) is estimated with no mini-batch term (``batch_size`` 0, no extra images).
The time per epoch comes from timing a few forward/backward passes on a probe batch and
scaling to the split's size. Both are estimates, meant to catch the order of magnitude: a run that
cannot fit is refused unless forced.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from smallset.data import ImageDataset
from smallset.errors import SmallsetError
from smallset.models import seeded_model

GiB = 1024 ** 3


@dataclass
class Estimate:
    peak_bytes: int
    available_bytes: int
    seconds_per_epoch: float
    device: str
    extra_bytes: int = 0  # the method's own share of peak_bytes (Method.extra_memory_bytes), included in it

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.available_bytes

    def describe(self) -> str:
        own = f" ({self.extra_bytes / GiB:.2f} GiB of it the method's own)" if self.extra_bytes else ""
        return (f"estimate: peak memory {self.peak_bytes / GiB:.2f} GiB{own} of {self.available_bytes / GiB:.1f} GiB "
                f"available on {self.device}; about {self.seconds_per_epoch:.1f} s per epoch over the training split")


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def activation_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of every module output in one forward pass of ``x`` (what backward keeps alive)."""
    total = 0

    def hook(_m, _i, out):
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * out.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total


def estimate_training(ds: ImageDataset, model_name: str, model_kwargs: dict | None, batch_size: int,
                      device: torch.device, probe_batch: int = 16, probe_steps: int = 2,
                      extra_images: int = 0, extra_bytes: int = 0) -> Estimate:
    """Estimate for training ``model_name`` on ``ds`` (``extra_images``: more images held at once, e.g.
    the real batches of every class a condenser matches against; ``extra_bytes``: memory the method holds
    beyond that, :meth:`smallset.method.Method.extra_memory_bytes`)."""
    # seeded_model, not create_model: its lock keeps this probe off other threads' seeded initialisations.
    model = seeded_model(model_name, ds.channels, ds.num_classes, ds.image_size, 0, **(model_kwargs or {})).to(device)
    image_bytes = ds.channels * ds.image_size[0] * ds.image_size[1] * 4
    data = 2 * len(ds) * image_bytes
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    n = min(probe_batch, max(1, len(ds)))
    x = ds.normalized()[:n].to(device)
    y = ds.labels[:n].to(device)
    act_per_image = activation_bytes(model, x) / n
    activations = 2 * act_per_image * (batch_size + extra_images)
    peak = int(data + 4 * params + activations + extra_images * image_bytes + extra_bytes)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    t0 = time.perf_counter()
    for _ in range(probe_steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    per_image = (time.perf_counter() - t0) / (probe_steps * n)
    return Estimate(peak, available_bytes(device), per_image * len(ds), str(device), int(extra_bytes))


def check(est: Estimate, force: bool = False, lower: tuple[str, ...] = ()) -> None:
    """Refuse a run whose memory estimate exceeds what the device has, unless ``force``. ``lower``: the
    method's options that shrink its own share (``Method.memory_options``), named first when that share
    is what does not fit."""
    if not est.fits and not force:
        own = bool(lower) and est.extra_bytes > 0 and est.peak_bytes - est.extra_bytes <= est.available_bytes
        advice = (f"lower {' or '.join(lower)} (the method's own {est.extra_bytes / GiB:.1f} GiB), or "
                  if own else "")
        raise SmallsetError(
            f"This run needs about {est.peak_bytes / GiB:.1f} GiB but {est.device} has "
            f"{est.available_bytes / GiB:.1f} GiB available; {advice}use a smaller model, batch or source, "
            f"or pass --force to try anyway.", option=lower[0] if own else None,
        )
