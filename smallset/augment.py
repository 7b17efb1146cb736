"""Differentiable Siamese Augmentation (DSA; Zhao & Bilen, ICML 2021) on kornia.

Six differentiable transformation families (color, crop, cutout, flip, scale, rotate) on normalised images,
one family per call (mode 'S'): Siamese (one parameter set shared by every image of the batches given, or
per group with :meth:`DSA.siamese_groups`) for matching, non-Siamese (independent parameters per image) for
inner loops and evaluation, where it is registered as the ``dsa`` training-time augmentation.

Rationale and the paper's recipe: docs/methods/dsa-augmentation.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from kornia.geometry.conversions import denormalize_homography
from kornia.geometry.transform import hflip, translate, warp_affine

from smallset.errors import SmallsetError
from smallset.plugins import PluginRegistry

# Training-time augmentations of the evaluation: name → factory(argument) → fn(x_normalised, generator) -> x,
# one module each in the plugin package smallset.augmentations (found on the first lookup; smallset.plugins).
AugmentFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
AUGMENTATIONS: PluginRegistry[Callable[[str | None], AugmentFn]] = \
    PluginRegistry("augmentation", plugins="smallset.augmentations")

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"
NO_FLIP_STRATEGY = "color_crop_cutout_scale_rotate"
FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")


def default_strategy(channels: int, dataset_key: str | None = None, method: str = "") -> str:
    """The reference's DSA strategy: flip for FashionMNIST and CIFAR, not for MNIST and SVHN; DM's default is
    the full strategy (flip included) everywhere; unrecognised data: no flip for 1-channel images (digits are
    not mirror symmetric), all six families otherwise (docs/methods/dsa-augmentation.md)."""
    from smallset.known_datasets import KNOWN

    if method == "dm":
        return DEFAULT_STRATEGY
    if dataset_key in KNOWN:
        return DEFAULT_STRATEGY if KNOWN[dataset_key].dsa_flip else NO_FLIP_STRATEGY
    return NO_FLIP_STRATEGY if int(channels) == 1 else DEFAULT_STRATEGY


@dataclass
class DSAParams:
    """Parameter ranges of the reference ``ParamDiffAug`` (docs/methods/dsa-augmentation.md#dsa-transformations)."""

    brightness: float = field(default=1.0, metadata={"help": "brightness shift range: x + (u − 0.5)·brightness"})
    saturation: float = field(default=2.0, metadata={"help": "saturation factor range [0, saturation)"})
    contrast: float = field(default=0.5, metadata={"help": "contrast factor range [contrast, contrast + 1)"})
    crop: float = field(default=0.125, metadata={"help": "largest translation, as a fraction of the image side"})
    cutout: float = field(default=0.5, metadata={"help": "cutout square side, as a fraction of the image side"})
    scale: float = field(default=1.2, metadata={"help": "scale factors per axis in [1/scale, scale]"})
    rotate: float = field(default=15.0, metadata={"help": "rotation angle range ±rotate degrees"})


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """``"color_crop_flip"`` → ``("color", "crop", "flip")``; ``""``/``"none"`` → no families."""
    if strategy is None or strategy.strip().lower() in ("", "none"):
        return ()
    tokens = tuple(t for t in strategy.strip().lower().split("_") if t)
    bad = [t for t in tokens if t not in FAMILIES]
    if bad:
        raise SmallsetError(
            f"Unknown DSA transformation {bad[0]!r} in strategy {strategy!r}; join tokens from "
            f"{', '.join(FAMILIES)} with '_' (e.g. {DEFAULT_STRATEGY}), or use 'none'."
        )
    if len(set(tokens)) != len(tokens):
        raise SmallsetError(f"DSA strategy {strategy!r} repeats a transformation; list each one once.")
    return tokens


class DSA:
    """Differentiable (Siamese) augmentation with one family per call (mode 'S',
    docs/methods/dsa-augmentation.md#dsa-transformations and #dsa-siamese)."""

    def __init__(self, strategy: str = DEFAULT_STRATEGY, config: DSAParams | None = None):
        self.strategy = strategy
        self.tokens = parse_strategy(strategy)
        self.config = config if config is not None else DSAParams()
        if self.config.scale < 1.0:
            raise SmallsetError("DSA scale must be at least 1 (factors lie in [1/scale, scale]).")
        self._ops: dict[str, Callable[[torch.Tensor, dict], torch.Tensor]] = {
            "color": self._color, "crop": self._crop, "cutout": self._cutout,
            "flip": self._flip, "scale": self._scale, "rotate": self._rotate,
        }

    def __repr__(self) -> str:
        return f"DSA({self.strategy!r})"

    # --- public API ---------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Non-Siamese: one family per call, independent parameters per image (inner loops, evaluation)."""
        self._check(x)
        if not self.tokens or len(x) == 0:
            return x
        fam = int(self._randint(0, len(self.tokens), (1,), generator))
        params = self._sample(self.tokens[fam], len(x), x.shape[2], x.shape[3], generator)
        return self._ops[self.tokens[fam]](x, self._to(params, x.device))

    def siamese(self, *batches: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """One family and ONE parameter set shared by every image of every batch
        (docs/methods/dsa-augmentation.md#dsa-siamese); returns the batches augmented, in the order given."""
        if not batches:
            return ()
        for b in batches:
            self._check(b)
        size = batches[0].shape[2:]
        if any(b.shape[2:] != size for b in batches):
            raise SmallsetError("Siamese augmentation needs batches of one image size.")
        if not self.tokens:
            return tuple(batches)
        fam = int(self._randint(0, len(self.tokens), (1,), generator))
        params = self._sample(self.tokens[fam], 1, size[0], size[1], generator)
        op = self._ops[self.tokens[fam]]
        return tuple(op(b, self._to(params, b.device)) if len(b) else b for b in batches)

    def siamese_groups(self, batches: Sequence[torch.Tensor], groups: Sequence[torch.Tensor],
                       generator: torch.Generator, num_groups: int | None = None) -> tuple[torch.Tensor, ...]:
        """Siamese augmentation of many groups (classes) in one batched call.

        ``groups[i]`` gives the group id (0..num_groups−1) of every row of ``batches[i]``. Each group
        draws its own family and parameter set, shared by all its rows in all batches — exactly what
        calling :meth:`siamese` once per class does, without the loop. Rows are processed with at most
        one batched op per family present.
        """
        if len(batches) != len(groups):
            raise SmallsetError("siamese_groups needs one group-id tensor per batch.")
        if not batches:
            return ()
        for b, g in zip(batches, groups):
            self._check(b)
            if g.shape != (len(b),):
                raise SmallsetError("Each group-id tensor must hold one id per image of its batch.")
        size = batches[0].shape[2:]
        if any(b.shape[2:] != size for b in batches):
            raise SmallsetError("Siamese augmentation needs batches of one image size.")
        if num_groups is None:
            num_groups = 1 + max((int(g.max()) for g in groups if len(g)), default=-1)
        if not self.tokens or num_groups == 0:
            return tuple(batches)
        fam = self._randint(0, len(self.tokens), (num_groups,), generator)
        present = sorted(set(fam.tolist()))
        params = {f: self._sample(self.tokens[f], num_groups, size[0], size[1], generator) for f in present}
        out = []
        for x, g in zip(batches, groups):
            if len(x) == 0:
                out.append(x)
                continue
            g = g.to(x.device, torch.long)
            row_fam = fam.to(x.device)[g]
            dev_params = {f: self._to(p, x.device) for f, p in params.items()}
            y = x
            for f in present:
                op = self._ops[self.tokens[f]]
                rows = torch.nonzero(row_fam == f, as_tuple=True)[0]
                if len(rows) == len(x):
                    y = op(x, {k: v[g] for k, v in dev_params[f].items()})
                elif len(rows):
                    part = op(x[rows], {k: v[g[rows]] for k, v in dev_params[f].items()})
                    y = y.index_copy(0, rows, part)
            out.append(y)
        return tuple(out)

    # --- sampling -------------------------------------------------------------------------------
    @staticmethod
    def _rand(n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(n, generator=generator, device=generator.device)

    @staticmethod
    def _randint(low: int, high: int, shape: tuple, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(low, high, shape, generator=generator, device=generator.device)

    @staticmethod
    def _to(params: dict, device) -> dict:
        return {k: v.to(device) for k, v in params.items()}

    def _sample(self, family: str, n: int, h: int, w: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        """``n`` independent parameter sets of one family, in the reference's draw order."""
        cfg = self.config
        if family == "color":
            return {"brightness": self._rand(n, g), "saturation": self._rand(n, g), "contrast": self._rand(n, g)}
        if family == "crop":
            sh, sw = int(h * cfg.crop + 0.5), int(w * cfg.crop + 0.5)
            return {"tx": self._randint(-sh, sh + 1, (n,), g), "ty": self._randint(-sw, sw + 1, (n,), g)}
        if family == "cutout":
            ch, cw = int(h * cfg.cutout + 0.5), int(w * cfg.cutout + 0.5)
            return {"ox": self._randint(0, h + (1 - ch % 2), (n,), g),
                    "oy": self._randint(0, w + (1 - cw % 2), (n,), g)}
        if family == "flip":
            return {"u": self._rand(n, g)}
        if family == "scale":
            lo = 1.0 / cfg.scale
            return {"sx": self._rand(n, g) * (cfg.scale - lo) + lo, "sy": self._rand(n, g) * (cfg.scale - lo) + lo}
        if family == "rotate":
            return {"angle": (self._rand(n, g) - 0.5) * 2 * cfg.rotate / 180 * math.pi}
        raise AssertionError(family)

    # --- the six families (x: B×C×H×W; every parameter tensor has B or 1 rows) -------------------
    @staticmethod
    def _col(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return v.to(x.dtype).view(-1, 1, 1, 1)

    def _color(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        cfg = self.config
        x = x + (self._col(p["brightness"], x) - 0.5) * cfg.brightness
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * (self._col(p["saturation"], x) * cfg.saturation) + m
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - m) * (self._col(p["contrast"], x) + cfg.contrast) + m

    def _crop(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        # out[i, j] = x[i + tx, j + ty], zero outside; kornia's translation is (dx, dy) = (−ty, −tx).
        shift = torch.stack([-p["ty"], -p["tx"]], dim=1).to(x.dtype)
        return translate(x, shift, mode="nearest", padding_mode="zeros", align_corners=True)

    def _cutout(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        ch, cw = int(h * self.config.cutout + 0.5), int(w * self.config.cutout + 0.5)
        top = (p["ox"] - ch // 2).view(-1, 1)
        left = (p["oy"] - cw // 2).view(-1, 1)
        rows = torch.arange(h, device=x.device).view(1, -1)
        cols = torch.arange(w, device=x.device).view(1, -1)
        in_r = (rows >= top) & (rows < top + ch)
        in_c = (cols >= left) & (cols < left + cw)
        keep = ~(in_r[:, :, None] & in_c[:, None, :])
        return x * keep[:, None].to(x.dtype)

    def _flip(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        return torch.where(self._col(p["u"], x) < 0.5, hflip(x), x)

    def _warp(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Warp with the reference's normalised output→input matrix θ (k×2×2, k = 1 or B)."""
        k = theta.shape[0]
        inv = torch.zeros(k, 3, 3, dtype=x.dtype, device=x.device)
        inv[:, :2, :2] = torch.linalg.inv(theta.to(x.dtype))
        inv[:, 2, 2] = 1.0
        size = (x.shape[2], x.shape[3])
        m = denormalize_homography(inv, size, size)  # kornia wants the input→output pixel map
        return warp_affine(x, m[:, :2, :], size, mode="bilinear", padding_mode="zeros", align_corners=True)

    def _scale(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        sx, sy = p["sx"].to(x.dtype), p["sy"].to(x.dtype)
        zero = torch.zeros_like(sx)
        theta = torch.stack([torch.stack([sx, zero], 1), torch.stack([zero, sy], 1)], 1)
        return self._warp(x, theta)

    def _rotate(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        a = p["angle"].to(x.dtype)
        c, s = torch.cos(a), torch.sin(a)
        theta = torch.stack([torch.stack([c, -s], 1), torch.stack([s, c], 1)], 1)
        return self._warp(x, theta)

    @staticmethod
    def _check(x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise SmallsetError("DSA augments N×C×H×W image batches; got "
                                f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}.")
        if not x.is_floating_point():
            raise SmallsetError("DSA augments floating-point (normalised) images.")


_BY_STRATEGY: dict[str, DSA] = {}


def dsa_augment(x: torch.Tensor, generator: torch.Generator, strategy: str | None = None) -> torch.Tensor:
    """Non-Siamese DSA as a training-time augmentation of the evaluation protocol, with ``strategy`` (default:
    the unrecognised-data default for the images' channel count; docs/methods/evaluation.md)."""
    strategy = strategy or default_strategy(x.shape[1])
    if strategy not in _BY_STRATEGY:
        _BY_STRATEGY[strategy] = DSA(strategy)
    return _BY_STRATEGY[strategy](x, generator)


# --- the DC augmentation (the reference's `augment` with dc_aug_param) ---------------------------------------
DC_FAMILIES = ("crop", "scale", "rotate", "noise")
DC_DEFAULT_STRATEGY = "crop_scale_rotate"


@dataclass(frozen=True)
class DCAugParams:
    """The reference's ``get_daparam`` values for MNIST: crop 4 px, scale ±0.2, rotate ±45°, noise 0.001."""

    crop: int = 4
    scale: float = 0.2
    rotate: int = 45
    noise: float = 0.001


def parse_dc_strategy(strategy: str | None) -> tuple[str, ...]:
    tokens = tuple(t for t in (strategy or DC_DEFAULT_STRATEGY).lower().split("_") if t)
    bad = [t for t in tokens if t not in DC_FAMILIES]
    if bad or not tokens:
        raise SmallsetError(f"Unknown DC augmentation {bad[0] if bad else strategy!r}; join tokens from "
                            f"{', '.join(DC_FAMILIES)} with '_' (e.g. {DC_DEFAULT_STRATEGY}).")
    return tokens


def dc_augment(x: torch.Tensor, generator: torch.Generator, strategy: str | None = None,
               params: DCAugParams = DCAugParams()) -> torch.Tensor:
    """The DC papers' evaluation augmentation: each image gets ONE of the strategy's operations, drawn
    uniformly (docs/methods/evaluation.md#dc-augmentation):

    - crop: pad ``crop`` px with the batch's per-channel mean, then a random crop back to H×W
      (offsets uniform in [0, 2·crop));
    - scale: resize by independent factors U(1−s, 1+s) per axis (nearest; both from the height, as the
      reference), centred on a zero canvas, centre crop back;
    - rotate: a random integer angle in [−rotate, rotate) about the centre, outside filled with the mean of
      the channel means (bicubic; the reference uses scipy's cubic spline);
    - noise: add N(0, noise²).
    Not differentiable through the random choices; for training-time use on detached batches.
    """
    families = parse_dc_strategy(strategy)
    n, c, h, w = x.shape
    out = x.detach().clone()
    mean = out.mean(dim=(0, 2, 3))
    choice = torch.randint(len(families), (n,), generator=generator)
    p = params
    for i in range(n):
        family = families[int(choice[i])]
        if family == "crop":
            canvas = mean.view(c, 1, 1).expand(c, h + 2 * p.crop, w + 2 * p.crop).clone()
            canvas[:, p.crop:p.crop + h, p.crop:p.crop + w] = out[i]
            r, s = (int(v) for v in torch.randint(2 * p.crop, (2,), generator=generator))
            out[i] = canvas[:, r:r + h, s:s + w]
        elif family == "scale":
            f = 1 - p.scale + 2 * p.scale * torch.rand(2, generator=generator)
            nh, nw = int(float(f[0]) * h), int(float(f[1]) * h)
            tmp = F.interpolate(out[i:i + 1], size=[max(1, nh), max(1, nw)], mode="nearest")[0]
            m = max(nh, nw, h, w)
            canvas = torch.zeros(c, m, m, dtype=out.dtype, device=out.device)
            r, s = (m - nh) // 2, (m - nw) // 2
            canvas[:, r:r + nh, s:s + nw] = tmp
            r, s = (m - h) // 2, (m - w) // 2
            out[i] = canvas[:, r:r + h, s:s + w]
        elif family == "rotate":
            angle = int(torch.randint(-p.rotate, p.rotate, (1,), generator=generator))
            fill = float(mean.mean())
            theta = math.radians(angle)
            rot = torch.tensor([[math.cos(theta), -math.sin(theta), 0.0],
                                [math.sin(theta), math.cos(theta), 0.0]], dtype=out.dtype, device=out.device)
            grid = F.affine_grid(rot.unsqueeze(0), [1, c, h, w], align_corners=False)
            shifted = F.grid_sample(out[i:i + 1] - fill, grid, mode="bicubic", padding_mode="zeros",
                                    align_corners=False)
            out[i] = shifted[0] + fill
        else:  # noise
            out[i] = out[i] + p.noise * torch.randn(out[i].shape, generator=generator).to(out.device)
    return out


CROP_PAD = 4  # pixels of reflect padding before the random crop (the CIFAR recipes: pad 4, crop 32)


def crop_flip(x: torch.Tensor, generator: torch.Generator, crop: bool = True, flip: bool = True,
              pad: int = CROP_PAD) -> torch.Tensor:
    """Per-example random crop of the reflect-padded batch (``pad`` pixels each side, the crop the size of
    the input) and horizontal flip with probability 1/2.

    ``x`` is an N×C×H×W batch on any device; the random numbers come from the CPU ``generator`` (offsets
    first, then flips), so the result is the same on every device. The padding is capped at H−1 and W−1
    (reflect padding needs it).
    """
    n, _, h, w = x.shape
    if n == 0 or not (crop or flip):
        return x
    out = x
    if crop:
        p = max(0, min(int(pad), h - 1, w - 1))
        oy = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
        ox = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
        if p > 0:
            padded = F.pad(x, (p, p, p, p), mode="reflect").permute(0, 2, 3, 1)  # N×H'×W'×C
            rows = oy[:, None] + torch.arange(h, device=x.device)  # N×H
            cols = ox[:, None] + torch.arange(w, device=x.device)  # N×W
            batch = torch.arange(n, device=x.device)[:, None, None]
            out = padded[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        mirror = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        out = torch.where(mirror[:, None, None, None], out.flip(3), out)
    return out.contiguous()


def crop_flip_augment(x: torch.Tensor, generator: torch.Generator, strategy: str | None = None) -> torch.Tensor:
    """The coreset papers' training augmentation as an evaluation augmentation: :func:`crop_flip`."""
    return crop_flip(x, generator, crop=True, flip=True)


def from_function(fn: Callable[[torch.Tensor, torch.Generator, str | None], torch.Tensor],
                  validate: Callable[[str | None], object] | None = None) -> Callable[[str | None], AugmentFn]:
    """An ``AUGMENTATIONS`` entry from ``fn(x, generator, argument)``: the factory checks the argument once
    with ``validate`` (one sentence for a bad one) and returns ``fn`` with the argument bound."""
    def make(argument: str | None) -> AugmentFn:
        if validate is not None:
            validate(argument)
        return lambda x, generator: fn(x, generator, argument)

    return make


def get_augmentation(spec: str | None) -> AugmentFn | None:
    """``none``/``""`` → None; ``NAME`` or ``NAME:ARGUMENT`` → the augmentation function (validated): it maps
    a batch of normalised images and a CPU generator to the augmented batch (docs/adding-a-component.md)."""
    if spec is None or spec in ("", "none"):
        return None
    name, _, argument = spec.partition(":")
    return AUGMENTATIONS.get(name)(argument or None)
