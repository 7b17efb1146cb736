"""Model registry: ``convnet`` (ConvNet-3 of the condensation papers), ``convnet-s`` (the same at width 32, for
CPU demos and tests), ``mlp``, ``lenet``, ``resnet18``.

Every model takes normalised N×C×H×W images and returns logits, and exposes ``embed(x)``: the
penultimate features (what herding, k-center and DM work on) and ``classifier`` (the last linear layer,
whose input is ``embed(x)``; GEDA's and CREST's last-layer gradients use it).

    model = create_model("convnet", channels=1, num_classes=10, image_size=(28, 28), width=64)
    model = seeded_model("convnet", 1, 10, (28, 28), seed=0)   # the same weights for the same seed, any thread
"""
from __future__ import annotations

import threading
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from smallset.errors import SmallsetError
from smallset.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def create_model(name: str, channels: int, num_classes: int, image_size: tuple[int, int], **kwargs) -> nn.Module:
    """Build a freshly initialised model; ``kwargs`` are the model's own options (e.g. width)."""
    factory = MODELS.get(name)
    try:
        model = factory(channels=channels, num_classes=num_classes, image_size=tuple(image_size), **kwargs)
        if any(p.numel() == 0 for p in model.parameters()):
            raise ValueError("a layer would have no weights")
        return model
    except TypeError as e:
        raise SmallsetError(f"Bad options for model {name!r}: {e}.", option="model_kwargs") from None
    except (ValueError, ArithmeticError, RuntimeError, MemoryError, IndexError) as e:
        given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "its default options"
        raise SmallsetError(f"Model {name!r} cannot be built with {given} for {channels}×{image_size[0]}×"
                            f"{image_size[1]} images and {num_classes} classes ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else 'no detail'}); give other model_kwargs.",
                            option="model_kwargs") from None


_INIT_LOCK = threading.Lock()


def seeded_model(name: str, channels: int, num_classes: int, image_size: tuple[int, int],
                 seed: int | torch.Generator, **kwargs) -> nn.Module:
    """:func:`create_model` whose initial weights depend only on ``seed``, safely from any thread.

    ``seed`` is an int (the weights ``torch.manual_seed(seed)`` would give on the CPU) or a CPU
    ``torch.Generator``, whose state is used and advanced, so that successive calls draw successive networks.
    PyTorch's layer initialisers draw from the process-wide CPU RNG; this swaps the seed's state in under a
    process-wide lock and puts the caller's state back, so concurrent threads cannot consume each other's
    random numbers (``compare --runner threads --workers N``) and the caller's global RNG is left untouched.
    The model is built on the CPU; move it with ``.to(device)``.
    """
    with _INIT_LOCK:
        saved = torch.get_rng_state()
        try:
            if isinstance(seed, torch.Generator):
                torch.set_rng_state(seed.get_state())
            else:
                torch.random.default_generator.manual_seed(int(seed))
            model = create_model(name, channels, num_classes, image_size, **kwargs)
            if isinstance(seed, torch.Generator):
                seed.set_state(torch.get_rng_state())
        finally:
            torch.set_rng_state(saved)
    return model


def model_names() -> list[str]:
    return MODELS.names()


def _norm(kind: str, c: int) -> nn.Module:
    norms = {
        # Instance norm as in the papers: GroupNorm with one group per channel, affine
        # (docs/methods/dc.md#convnet).
        "instancenorm": lambda: nn.GroupNorm(c, c, affine=True),
        "batchnorm": lambda: nn.BatchNorm2d(c),
        "layernorm": lambda: nn.GroupNorm(1, c, affine=True),
        "groupnorm": lambda: nn.GroupNorm(4, c, affine=True),
        "none": lambda: nn.Identity(),
    }
    if kind not in norms:
        raise SmallsetError(f"Unknown norm {kind!r}; choose one of {', '.join(norms)}.")
    return norms[kind]()


class _AvgPool2(torch.autograd.Function):
    """2×2 average pooling, stride 2, of an NCHW-contiguous CPU tensor of even height and width: the two rows
    of every pair added (contiguous rows), then the two columns, times ¼. The same value as
    ``F.avg_pool2d(x, 2)`` up to the order of the four-term sum (≤ 1 ulp-level differences), 4–6× faster than
    ATen's NCHW CPU kernel, which was a quarter of a ConvNet-128 forward (issue 15, BENCHMARKS.md). The
    backward (¼ of the output gradient on each of the four inputs) is itself differentiable: double
    backward (DC/DSA's gradient matching) works."""

    @staticmethod
    def forward(ctx, x):
        n, c, h, w = x.shape
        rows = x.view(n, c, h // 2, 2 * w)
        pairs = (rows[..., :w] + rows[..., w:]).view(n, c, h // 2, w // 2, 2)
        return (pairs[..., 0] + pairs[..., 1]).mul_(0.25)

    @staticmethod
    def backward(ctx, g):
        # Each column doubled, then each row (two contiguous copies: 2.5× faster than ATen's backward).
        n, c, h2, w2 = g.shape
        cols = (g * 0.25).unsqueeze(-1).expand(n, c, h2, w2, 2).reshape(n, c, h2, 1, 2 * w2)
        return cols.expand(n, c, h2, 2, 2 * w2).reshape(n, c, 2 * h2, 2 * w2)


def _is_transformed(x: torch.Tensor) -> bool:
    try:  # vmap/grad (torch.func) wrap their tensors; the custom Function has no vmap rule
        return bool(torch._C._functorch.is_functorch_wrapped_tensor(x))
    except AttributeError:
        return True


def avg_pool2(x: torch.Tensor) -> torch.Tensor:
    """``F.avg_pool2d(x, 2)``, through :class:`_AvgPool2` where that is faster (CPU, NCHW-contiguous, even
    sides, no torch.func transform)."""
    if (x.device.type == "cpu" and x.dim() == 4 and x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0
            and x.is_contiguous() and x.numel() and not _is_transformed(x)):
        return _AvgPool2.apply(x)
    return F.avg_pool2d(x, 2)


class ConvNet(nn.Module):
    """ConvNet-D of DC/DSA/DM/CAFE (docs/methods/dc.md#convnet).

    Per block: Conv3×3(width) → norm → ReLU → AvgPool2×2; then flatten → Linear. With a 1-channel 28×28
    input the first conv pads by 3 so the map is 32×32 and the feature size matches the 3-channel case
    (2048 for width 128, depth 3). Defaults reproduce the paper's net: width 128, depth 3, instance norm.
    """

    def __init__(self, channels: int, num_classes: int, image_size=(32, 32), width: int = 128, depth: int = 3,
                 norm: str = "instancenorm"):
        super().__init__()
        h, w = image_size
        pad0 = 3 if (channels == 1 and (h, w) == (28, 28)) else 1
        if pad0 == 3:
            h, w = 32, 32
        self.blocks = nn.ModuleList()
        c_in = channels
        for d in range(depth):
            self.blocks.append(nn.Sequential(
                nn.Conv2d(c_in, width, 3, padding=pad0 if d == 0 else 1),
                _norm(norm, width),
                nn.ReLU(inplace=True),
            ))
            c_in = width
            h, w = h // 2, w // 2
        if h < 1 or w < 1:
            raise SmallsetError(f"ConvNet depth {depth} is too deep for {image_size} images.")
        self.feature_dim = width * h * w
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def layer_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Activations used by CAFE (docs/methods/cafe.md#cafe-features): each block after ReLU (before
        pooling), then the last pooled map."""
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
            x = avg_pool2(x)
        outs.append(x)
        return outs

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = avg_pool2(block(x))
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class MLP(nn.Module):
    """Three fully connected layers with 128 hidden units (the condensation papers' MLP)."""

    def __init__(self, channels: int, num_classes: int, image_size=(32, 32), width: int = 128):
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * image_size[0] * image_size[1], width), nn.ReLU(inplace=True),
            nn.Linear(width, width), nn.ReLU(inplace=True),
        )
        self.feature_dim = width
        self.classifier = nn.Linear(width, num_classes)

    def embed(self, x):
        return self.body(x)

    def forward(self, x):
        return self.classifier(self.embed(x))


class LeNet(nn.Module):
    """LeNet-5 (conv 6 → conv 16 → fc 120 → fc 84 → classes); 28×28 grey inputs are padded to 32×32."""

    def __init__(self, channels: int, num_classes: int, image_size=(32, 32)):
        super().__init__()
        h, w = image_size
        pad = 2 if (h, w) == (28, 28) else 0
        if pad:
            h, w = 32, 32
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 5, padding=pad), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Flatten(),
        )
        fh, fw = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
        if fh < 1 or fw < 1:
            raise SmallsetError(f"LeNet needs images of at least 16×16, not {image_size}.")
        self.fc = nn.Sequential(nn.Linear(16 * fh * fw, 120), nn.ReLU(inplace=True), nn.Linear(120, 84),
                                nn.ReLU(inplace=True))
        self.feature_dim = 84
        self.classifier = nn.Linear(84, num_classes)

    def embed(self, x):
        return self.fc(self.features(x))

    def forward(self, x):
        return self.classifier(self.embed(x))


class ResNet18(nn.Module):
    """torchvision's ResNet-18 with the small-image stem (3×3 conv, stride 1, no max-pool) for 28–32 px inputs."""

    def __init__(self, channels: int, num_classes: int, image_size=(32, 32)):
        super().__init__()
        import torchvision

        net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
        net.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        self.classifier = net.fc
        net.fc = nn.Identity()
        self.body = net
        self.feature_dim = 512

    def embed(self, x):
        return self.body(x)

    def forward(self, x):
        return self.classifier(self.embed(x))


MODELS.register("convnet")(ConvNet)


@MODELS.register("convnet-s")
def convnet_small(channels: int, num_classes: int, image_size=(32, 32), **kwargs) -> ConvNet:
    """ConvNet-3 at width 32: about 10× cheaper than width 128, for CPU demos and tests."""
    kwargs.setdefault("width", 32)
    return ConvNet(channels, num_classes, image_size, **kwargs)


MODELS.register("mlp")(MLP)
MODELS.register("lenet")(LeNet)
MODELS.register("resnet18")(ResNet18)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; ``cuda`` without a GPU is an error, not a fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    import re

    if not re.fullmatch(r"cpu|cuda(:\d+)?", str(device)):
        raise SmallsetError(f"Unknown device {device!r}; use auto, cpu, cuda or cuda:N.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SmallsetError("device cuda was asked for, but no CUDA GPU is available; use device cpu or auto.",
                            option="device")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise SmallsetError(f"device {device} does not exist: this machine has {torch.cuda.device_count()} CUDA "
                            f"GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}.", option="device")
    return torch.device(device)
