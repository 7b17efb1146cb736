"""Contract tests for every registered training-time augmentation (smallset.augmentations, registered in
smallset.augment.AUGMENTATIONS).

Parametrised over the registry, so a new module in smallset/augmentations/ is tested with no other edit
(docs/adding-a-component.md). The contract: a batch of normalised images in, a batch of the same shape, dtype
and device out, the input left untouched, finite values near the input's range, every random draw from the
generator it is given (the same seed gives the same batch whatever the global RNG), and a model trains with it.
"""
import math

import pytest
import torch

from smallset.augment import AUGMENTATIONS, get_augmentation
from smallset.models import create_model
from smallset.train import fit, get_protocol

from helpers import make_tiny_dataset

CASES = [(name, channels) for name in AUGMENTATIONS.names() for channels in (1, 3)]


def normalised_batch(channels: int, seed: int = 0) -> torch.Tensor:
    """Six 12×12 images as the models see them: pixels in [0, 1] normalised with mean 0.5, std 0.25."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(6, channels, 12, 12, generator=g) - 0.5) / 0.25


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name,channels", CASES)
def test_augmentation_keeps_the_batch_and_leaves_the_input(name, channels):
    augment = get_augmentation(name)
    for seed in range(4):
        x = normalised_batch(channels, seed)
        kept = x.clone()
        out = augment(x, generator(seed))
        assert isinstance(out, torch.Tensor) and out.shape == x.shape and out.dtype == x.dtype
        assert out.device == x.device
        assert torch.equal(x, kept), f"{name} changed its input in place"
        assert torch.isfinite(out).all()
        lo, hi = float(x.min()), float(x.max())
        span = hi - lo
        assert lo - 2 * span <= float(out.min()) and float(out.max()) <= hi + 2 * span, (
            f"{name}: pixels in [{float(out.min()):.3g}, {float(out.max()):.3g}] from [{lo:.3g}, {hi:.3g}]")


@pytest.mark.parametrize("name,channels", CASES)
def test_augmentation_draws_only_from_its_generator(name, channels):
    augment = get_augmentation(name)
    x = normalised_batch(channels)
    torch.manual_seed(1)
    first = augment(x, generator(7))
    torch.manual_seed(2)  # a different global RNG state must not matter
    assert torch.equal(augment(x, generator(7)), first), f"{name}: the same seed gave another batch"
    outs = [augment(x, generator(s)) for s in range(6)]
    assert any(not torch.equal(o, x) for o in outs), f"{name} never changed the batch"
    assert any(not torch.equal(o, outs[0]) for o in outs[1:]), f"{name} ignores its generator"


@pytest.mark.parametrize("name", AUGMENTATIONS.names())
def test_augmentation_trains_a_tiny_model(name):
    ds = make_tiny_dataset(n_per_class=2, num_classes=3, channels=3)
    torch.manual_seed(0)
    model = create_model("mlp", 3, 3, (8, 8), width=4)
    losses = fit(model, ds, get_protocol("quick", augment=name, epochs=2), seed=0)
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
