"""DSA augmentation (docs/methods/dsa-augmentation.md): parameter distributions, exact ops, Siamese sharing,
gradients into the synthetic pixels, registration for the evaluation protocol."""
import math

import pytest
import torch
import torch.nn.functional as F

from smallset.augment import (
    AUGMENTATIONS,
    DEFAULT_STRATEGY,
    DSA,
    FAMILIES,
    DSAParams,
    default_strategy,
    get_augmentation,
)
from smallset.errors import SmallsetError
from smallset.train import fit, get_protocol


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- the ops against hand-written reference semantics ------------------------------------------------
def test_crop_is_zero_filled_integer_translation():
    x = torch.arange(2 * 1 * 5 * 6, dtype=torch.float32).view(2, 1, 5, 6) + 1
    out = DSA("crop")._crop(x, {"tx": torch.tensor([1, -2]), "ty": torch.tensor([-1, 3])})
    for b, (tx, ty) in enumerate([(1, -1), (-2, 3)]):
        for i in range(5):
            for j in range(6):
                si, sj = i + tx, j + ty
                want = x[b, 0, si, sj] if 0 <= si < 5 and 0 <= sj < 6 else 0.0
                assert out[b, 0, i, j] == want


def test_cutout_zeroes_the_clipped_square():
    x = torch.ones(3, 2, 8, 8)
    # side int(0.5·8 + 0.5) = 4, square rows ox−2 … ox+1
    out = DSA("cutout")._cutout(x, {"ox": torch.tensor([0, 4, 8]), "oy": torch.tensor([4, 0, 8])})
    assert out[0, :, 0:2, 2:6].eq(0).all() and out[0].sum() == 2 * (64 - 8)
    assert out[1, :, 2:6, 0:2].eq(0).all() and out[1].sum() == 2 * (64 - 8)
    assert out[2, :, 6:8, 6:8].eq(0).all() and out[2].sum() == 2 * (64 - 4)


def test_color_matches_hand_computation():
    x = torch.tensor([[[[1.0, 3.0]], [[5.0, 7.0]]]])  # 1×2×1×2
    out = DSA("color")._color(x, {"brightness": torch.tensor([0.75]), "saturation": torch.tensor([0.25]),
                                  "contrast": torch.tensor([0.0])})
    y = x + 0.25  # brightness (0.75 − 0.5)·1
    m = y.mean(1, keepdim=True)
    y = (y - m) * 0.5 + m  # saturation factor 0.25·2
    m = y.mean()
    y = (y - m) * 0.5 + m  # contrast factor 0 + 0.5
    assert torch.allclose(out, y)


def test_scale_and_rotate_match_affine_grid_align_corners():
    x = torch.randn(3, 2, 7, 9, generator=gen(1))
    sx, sy = torch.tensor([1.1, 0.9, 1.2]), torch.tensor([0.85, 1.15, 1.0])
    theta = torch.zeros(3, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = sx, sy
    ref = F.grid_sample(x, F.affine_grid(theta, x.shape, align_corners=True), align_corners=True)
    assert torch.allclose(DSA("scale")._scale(x, {"sx": sx, "sy": sy}), ref, atol=1e-5)
    a = torch.tensor([0.2, -0.26, 0.0])
    theta = torch.zeros(3, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = a.cos(), -a.sin(), a.sin(), a.cos()
    ref = F.grid_sample(x, F.affine_grid(theta, x.shape, align_corners=True), align_corners=True)
    out = DSA("rotate")._rotate(x, {"angle": a})
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(out[2], x[2], atol=1e-5)  # angle 0 is the identity


def test_flip_only_below_one_half():
    x = torch.randn(2, 1, 4, 5, generator=gen(2))
    out = DSA("flip")._flip(x, {"u": torch.tensor([0.2, 0.7])})
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1])


def test_parameter_distributions_follow_paramdiffaug():
    d = DSA(DEFAULT_STRATEGY)
    g = gen(3)
    crop = d._sample("crop", 4000, 32, 28, g)  # s = int(0.125·32 + 0.5) = 4, int(0.125·28 + 0.5) = 4
    assert set(crop["tx"].tolist()) == set(range(-4, 5)) and set(crop["ty"].tolist()) == set(range(-4, 5))
    cut = d._sample("cutout", 4000, 32, 28, g)  # even sides 16 / 14 → centres 0..H inclusive
    assert set(cut["ox"].tolist()) == set(range(0, 33)) and set(cut["oy"].tolist()) == set(range(0, 29))
    sc = d._sample("scale", 4000, 32, 32, g)["sx"]
    assert sc.min() >= 1 / 1.2 and sc.max() <= 1.2 and sc.min() < 0.85 and sc.max() > 1.18
    ang = d._sample("rotate", 4000, 32, 32, g)["angle"]
    assert ang.abs().max() <= math.radians(15) + 1e-6 and ang.abs().max() > math.radians(14.5)


def test_mode_s_picks_one_family_uniformly():
    d = DSA("flip_crop")
    g = gen(4)
    picks = torch.stack([d._randint(0, len(d.tokens), (1,), g) for _ in range(2000)]).float()
    assert 0.45 < picks.mean() < 0.55


# --- Siamese sharing ----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_siamese_identical_inputs_give_identical_outputs(family):
    d = DSA(family)
    real = torch.randn(1, 3, 12, 12, generator=gen(5))
    reals = real.repeat(6, 1, 1, 1)  # six copies of the same image in the "real" batch
    syn = real.clone()
    a, b = d.siamese(reals, syn, generator=gen(6))
    assert torch.equal(a, a[:1].expand_as(a))  # one parameter set for the whole batch
    assert torch.equal(b, a[:1])  # … shared with the other batch
    assert not torch.equal(a[:1], real) or family == "flip"  # something happened (flip may not fire)


@pytest.mark.parametrize("family", FAMILIES)
def test_different_draws_give_different_outputs(family):
    d = DSA(family)
    x = torch.randn(2, 3, 12, 12, generator=gen(7))
    outs = [d.siamese(x, generator=gen(s))[0] for s in range(8)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    # same seed → identical output (reproducibility)
    assert torch.equal(d.siamese(x, generator=gen(3))[0], d.siamese(x, generator=gen(3))[0])


def test_non_siamese_draws_per_image_parameters():
    d = DSA("rotate")
    x = torch.randn(1, 1, 10, 10, generator=gen(8)).repeat(5, 1, 1, 1)
    out = d(x, gen(9))
    assert not torch.allclose(out[0], out[1])
    assert torch.equal(out, d(x, gen(9)))


def test_siamese_groups_share_within_group_and_differ_across_groups():
    d = DSA(DEFAULT_STRATEGY)
    img = torch.randn(1, 3, 10, 10, generator=gen(10))
    groups = 6
    real = img.repeat(groups * 4, 1, 1, 1)
    real_g = torch.arange(groups).repeat(4)  # interleaved: group ids 0..5,0..5,…
    syn = img.repeat(groups * 2, 1, 1, 1)
    syn_g = torch.arange(groups).repeat_interleave(2)
    r, s = d.siamese_groups([real, syn], [real_g, syn_g], generator=gen(11), num_groups=groups)
    first = {}
    for x, g in ((r, real_g), (s, syn_g)):
        for i, k in enumerate(g.tolist()):
            first.setdefault(k, x[i])
            assert torch.equal(x[i], first[k])
    distinct = {tuple(first[k].flatten()[:50].tolist()) for k in range(groups)}
    assert len(distinct) > 1


def test_siamese_groups_match_per_group_siamese_semantics():
    """A group's rows get the op its own family and parameters define: re-applying that family's op
    with the group's parameters on its rows reproduces the batched result."""
    d = DSA("crop_cutout")
    x = torch.randn(8, 2, 9, 9, generator=gen(12))
    g = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    g1 = gen(13)
    fam = d._randint(0, 2, (4,), g1)
    params = {f: d._sample(d.tokens[f], 4, 9, 9, g1) for f in sorted(set(fam.tolist()))}
    (out,) = d.siamese_groups([x], [g], generator=gen(13), num_groups=4)
    for k in range(4):
        rows = (g == k).nonzero().flatten()
        f = int(fam[k])
        want = d._ops[d.tokens[f]](x[rows], {n: v[k:k + 1] for n, v in params[f].items()})
        assert torch.equal(out[rows], want)


# --- gradients --------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_reach_synthetic_pixels_through_each_family(family):
    d = DSA(family)
    real = torch.randn(5, 3, 12, 12, generator=gen(14))
    syn = torch.randn(2, 3, 12, 12, generator=gen(15), requires_grad=True)
    w = torch.randn(2, 3, 12, 12, generator=gen(16))
    _, s = d.siamese(real, syn, generator=gen(17))
    (s * w).sum().backward()
    assert syn.grad is not None and syn.grad.abs().sum() > 0 and torch.isfinite(syn.grad).all()
    syn.grad = None
    (g_out,) = d.siamese_groups([syn], [torch.tensor([0, 1])], generator=gen(18))
    (g_out * w).sum().backward()
    assert syn.grad.abs().sum() > 0
    syn.grad = None
    (d(syn, gen(19)) * w).sum().backward()
    assert syn.grad.abs().sum() > 0


# --- shapes, errors, registration ----------------------------------------------------------------------
def test_any_channels_and_non_square_images():
    d = DSA(DEFAULT_STRATEGY)
    x = torch.randn(4, 5, 7, 11, generator=gen(20))
    for s in range(12):
        assert d(x, gen(s)).shape == x.shape
        a, b = d.siamese(x, x[:1], generator=gen(s))
        assert a.shape == x.shape and b.shape == (1, 5, 7, 11)


def test_none_strategy_is_identity_and_bad_input_raises():
    x = torch.randn(2, 1, 6, 6)
    assert DSA("none")(x, gen()) is x
    with pytest.raises(SmallsetError, match="Unknown DSA transformation"):
        DSA("color_blur")
    with pytest.raises(SmallsetError):
        DSA("crop")(torch.randn(6, 6), gen())
    with pytest.raises(SmallsetError, match="one image size"):
        DSA("crop").siamese(x, torch.randn(1, 1, 5, 5), generator=gen())


def test_default_strategy_and_registered_for_evaluation(tiny_dataset):
    assert default_strategy(1) == "color_crop_cutout_scale_rotate" and default_strategy(3) == DEFAULT_STRATEGY
    assert DSAParams().saturation == 2.0 and DSAParams().rotate == 15.0
    assert "dsa" in AUGMENTATIONS
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(get_augmentation("dsa")(x, gen(21)), DSA(default_strategy(1))(x, gen(21)))
    assert torch.equal(get_augmentation("dsa:color_flip")(x, gen(21)), DSA("color_flip")(x, gen(21)))
    # the reference's strategy by dataset and method: no flip for MNIST and SVHN, flip for FashionMNIST and
    # CIFAR; DM's default includes flip everywhere
    assert default_strategy(1, "mnist", "dsa") == default_strategy(3, "svhn", "dc") == "color_crop_cutout_scale_rotate"
    assert default_strategy(1, "fashion_mnist", "dsa") == default_strategy(3, "cifar10", "dsa") == DEFAULT_STRATEGY
    assert default_strategy(1, "mnist", "dm") == DEFAULT_STRATEGY
    from smallset.models import create_model

    ds = tiny_dataset(n_per_class=4, num_classes=2, channels=3, size=8)
    torch.manual_seed(0)
    model = create_model("mlp", 3, 2, (8, 8), width=8)
    losses = fit(model, ds, get_protocol("quick", augment="dsa", epochs=2), seed=0)
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)


def test_dc_augmentation_applies_one_operation_per_image():
    """The DC augmentation by hand: with only crop, each image is its mean-padded copy shifted by an integer
    offset in [-4, 4); with only noise, the change is N(0, 0.001²) sized; unknown tokens are refused."""
    from smallset.augment import dc_augment

    x = torch.randn(6, 1, 8, 8)
    out = dc_augment(x, gen(3), "crop")
    mean = x.mean(dim=(0, 2, 3))
    canvas = mean.view(1, -1, 1, 1).expand(6, 1, 16, 16).clone()
    canvas[:, :, 4:12, 4:12] = x
    for i in range(6):
        crops = [canvas[i, :, r:r + 8, s:s + 8] for r in range(8) for s in range(8)]
        assert any(torch.equal(out[i], c) for c in crops)
    assert not torch.equal(out, x)
    noisy = dc_augment(x, gen(3), "noise")
    assert 0 < float((noisy - x).abs().max()) < 0.01
    rotated = dc_augment(x, gen(4), "rotate")
    assert rotated.shape == x.shape and torch.isfinite(rotated).all()
    scaled = dc_augment(torch.ones(2, 1, 8, 8), gen(5), "scale")  # zero canvas shows where the image shrank
    assert set(scaled.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(dc_augment(x, gen(9), "crop_scale_rotate"), dc_augment(x, gen(9), "crop_scale_rotate"))
    with pytest.raises(SmallsetError, match="Unknown DC augmentation"):
        get_augmentation("dc:crop_blur")
