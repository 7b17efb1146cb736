"""CAFE (docs/methods/cafe.md): stop rules on scripted accuracies (incl. the accumulator quirk), the batched losses
against a per-class loop, the loop wiring, any class/channel/size count, learning on tiny data; the aligned
features (post-ReLU) and the discrimination loss's gradient against re-implementations from the doc."""
import copy

import pytest
import torch
import torch.nn.functional as F

from smallset.context import RunContext
from smallset.data import ImageDataset
from smallset.distill.base import CONDENSERS
from smallset.distill.cafe import CAFEConfig, LoopWatcher, class_means, halved_lr
from smallset.errors import SmallsetError
from smallset.models import ConvNet


def small_ctx(**kw):
    return RunContext(seed=0, model="convnet-s", model_kwargs={"width": 8}, **kw)


def feed(watcher, values):
    """Number of probes after which the watcher stops (None if it never does)."""
    for i, v in enumerate(values, 1):
        if watcher.update(v):
            return i
    return None


# --- stop rules ----------------------------------------------------------------------------------------
def test_outer_rule_stops_when_window_is_stable():
    w = LoopWatcher(0.04, "stable", window=3)
    # [0.1, 0.5, 0.52] spans 0.42 → keep going; [0.5, 0.52, 0.53] spans 0.03 < 0.04 → stop at probe 4.
    assert feed(w, [0.1, 0.5, 0.52, 0.53, 0.53]) == 4 and w.reason == "threshold"


def test_outer_rule_with_accumulator_quirk():
    # carry 0.1 (10 classes): values 0.1, 0.51, 0.571, 0.5871, 0.58871 → windows span 0.461, 0.0771, 0.01771.
    w = LoopWatcher(0.04, "stable", window=3, carry=0.1)
    assert feed(w, [0.1, 0.5, 0.52, 0.53, 0.53, 0.53]) == 5
    assert w.history == pytest.approx([0.571, 0.5871, 0.58871])


def test_constant_accuracy_needs_one_more_probe_with_the_quirk():
    """At the default window 10, a constant accuracy 0.5 stops after exactly 10 probes without the
    quirk; with it the values climb 0.5, 0.55, 0.555, … (first window spans 0.0555 > λ1) → 11 probes."""
    assert feed(LoopWatcher(0.04, "stable", window=10), [0.5] * 30) == 10
    w = LoopWatcher(0.04, "stable", window=10, carry=0.1)
    assert feed(w, [0.5] * 30) == 11
    assert w.value == pytest.approx(0.5 * (1 - 0.1 ** 11) / 0.9)


def test_inner_rule_stops_when_window_changed_enough():
    # [0.5, 0.51, 0.52] spans 0.02 → drop 0.5; [0.51, 0.52, 0.55] spans 0.04 > 0.03 → stop at probe 4.
    assert feed(LoopWatcher(0.03, "changed", window=3), [0.5, 0.51, 0.52, 0.55]) == 4
    # With carry ½ (2 classes): 0.5, 0.76, 0.9, 1.0 — the first window already spans 0.4.
    w = LoopWatcher(0.03, "changed", window=3, carry=0.5)
    assert feed(w, [0.5, 0.51, 0.52, 0.55]) == 3
    assert w.history == pytest.approx([0.5, 0.76, 0.9])


def test_caps_end_a_loop_that_never_meets_its_rule():
    w = LoopWatcher(0.03, "changed", window=3, cap=7)
    assert feed(w, [0.5] * 20) == 7 and w.reason == "cap"
    w = LoopWatcher(0.04, "stable", window=3, cap=5)
    assert feed(w, [0.0, 1.0] * 10) == 5 and w.reason == "cap"
    with pytest.raises(SmallsetError):
        LoopWatcher(0.04, "stable", window=1)


def test_loop_wiring_follows_scripted_probes(tiny_dataset):
    """Outer probes 0.1, 0.5, 0.51 and inner probes 0.2, 0.3 | 0.5, 0.51, 0.6 with window 2, no quirk:
    the outer loop takes 3 image steps, the inner loops run 2 then 3 epochs (docs/methods/cafe.md)."""
    ds = tiny_dataset(n_per_class=4, num_classes=2, size=8)
    cfg = CAFEConfig(iterations=1, watch_window=2, accumulator_quirk=False, batch_real=4, probe_per_class=4)
    cafe = CONDENSERS.get("cafe")(cfg)
    script = iter([0.1, 0.2, 0.3, 0.5, 0.5, 0.51, 0.6, 0.51])
    log = []
    orig_setup = cafe.setup

    def setup(*a, **k):
        orig_setup(*a, **k)
        step, probe = cafe._image_step, cafe._probe
        cafe._image_step = lambda net: (log.append("step"), step(net))[1]
        cafe._probe = lambda net: (probe(net), next(script))[1]

    cafe.setup = setup
    out = cafe.condense(ds, 1, small_ctx())
    assert log == ["step"] * 3
    assert out.info["outer_steps"] == [3.0] and out.info["inner_epochs"] == [5.0]
    assert out.info["outer_cap_hits"] == 0.0 and out.info["inner_cap_hits"] == 0.0
    assert next(script, "done") == "done"


def test_lr_halving_schedule():
    ms = [1200, 1600, 1800]
    assert [halved_lr(0.1, it, ms) for it in (0, 1199, 1200, 1599, 1600, 1800, 2000)] == \
        pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.0125, 0.0125])


# --- losses -------------------------------------------------------------------------------------------
def test_class_means_with_unequal_counts():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [10.0, 0.0]])
    y = torch.tensor([1, 0, 1, 1])
    assert torch.allclose(class_means(x, y, 2), torch.tensor([[3.0, 4.0], [16 / 3, 8 / 3]]))


def test_batched_losses_equal_a_per_class_loop(tiny_dataset):
    ds = tiny_dataset(n_per_class=6, num_classes=3, channels=2, size=8)
    ipc = 2
    cafe = CONDENSERS.get("cafe")(CAFEConfig(iterations=1))
    cafe.setup(ds, ipc, small_ctx())
    torch.manual_seed(3)
    net = cafe._new_net()
    x = ds.normalized()
    # Unequal class counts in the real batch (5, 3, 4 images), class-major.
    xr = torch.cat([x[ds.labels == 0][:5], x[ds.labels == 1][:3], x[ds.labels == 2][:4]])
    yr = torch.tensor([0] * 5 + [1] * 3 + [2] * 4)
    cafe.sampler.batch_all = lambda n, g: (xr, yr)
    syn0 = cafe.syn.detach().clone()
    total, align, last, disc = cafe._image_step(net)

    weights = [0.1, 0.1, 1.0, 1.0]
    with torch.no_grad():
        fr, fs = net.layer_outputs(xr), net.layer_outputs(syn0)
        want_align, want_last = 0.0, 0.0
        centres = []
        for c in range(3):
            for w, a, b in zip(weights, fr, fs):
                want_align += w * float(((a[yr == c].mean(0) - b[c * ipc:(c + 1) * ipc].mean(0)) ** 2).sum())
            mr = fr[-1][yr == c].flatten(1).mean(0)
            ms = fs[-1][c * ipc:(c + 1) * ipc].flatten(1).mean(0)
            want_last += float(((mr - ms) ** 2).sum())
            centres.append(ms)
        logits = torch.stack([torch.stack([fr[-1][i].flatten() @ centres[k] for k in range(3)])
                              for i in range(len(yr))])
        want_disc = float(F.cross_entropy(logits, yr, reduction="sum"))
    assert align == pytest.approx(want_align, rel=1e-4)
    assert last == pytest.approx(want_last, rel=1e-4)
    assert disc == pytest.approx(want_disc, rel=1e-4)
    assert total == pytest.approx(want_align + want_last + 0.01 * want_disc, rel=1e-4)
    assert not torch.equal(cafe.syn.detach(), syn0)  # one image step was taken


# --- runs ---------------------------------------------------------------------------------------------
def test_loss_goes_down_on_tiny_data(tiny_dataset):
    ds = tiny_dataset(n_per_class=10, num_classes=3, size=16)
    cfg = CAFEConfig(iterations=8, batch_real=10, probe_per_class=10, watch_window=2,
                     max_outer_steps=4, max_inner_epochs=4)
    cafe = CONDENSERS.get("cafe")(cfg)
    out = cafe.condense(ds, 2, small_ctx())
    curve = out.info["loss_curve"]
    assert len(curve) == 8 and len(out.info["outer_steps"]) == 8
    assert sum(curve[-3:]) < 0.6 * sum(curve[:3]), curve
    assert out.info["mean_abs_change"] > 0.01
    assert all(2 <= s <= 4 for s in out.info["outer_steps"])


@pytest.mark.parametrize("dsa", [False, True])
def test_any_classes_channels_and_sizes(dsa):
    """5 classes of 3×12×10 images with unequal class sizes (smaller than batch_real)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1, 2, 3, 4] * 4 + [0, 1, 0])
    images = torch.rand(len(labels), 3, 12, 10, generator=g)
    ds = ImageDataset(images, labels, [f"k{i}" for i in range(5)], (0.5,) * 3, (0.25,) * 3)
    cfg = CAFEConfig(iterations=2, watch_window=2, max_outer_steps=2, max_inner_epochs=2, dsa=dsa)
    out = CONDENSERS.get("cafe")(cfg).condense(ds, 3, small_ctx())
    assert out.images.shape == (15, 3, 12, 10)
    assert out.labels.tolist() == [c for c in range(5) for _ in range(3)]
    assert torch.isfinite(out.images).all()


def test_bad_settings_raise(tiny_dataset):
    ds = tiny_dataset(n_per_class=4, num_classes=2, size=8)
    cafe = CONDENSERS.get("cafe")
    with pytest.raises(SmallsetError, match="layer_outputs"):
        cafe(CAFEConfig(iterations=1)).condense(ds, 1, RunContext(model="mlp"))
    for bad in (dict(layer_weights="0.1,1"), dict(layer_weights="a,b"), dict(lr_halving="0.5,2"),
                dict(watch_window=1), dict(init="zeros"), dict(max_outer_steps=0), dict(dsa=True, dsa_strategy="blur")):
        with pytest.raises(SmallsetError):
            cafe(CAFEConfig(iterations=1, **bad)).condense(ds, 1, small_ctx())


def test_loop_caps_below_the_watch_window_are_refused(tiny_dataset):
    """With a cap below the watch window the dynamic stop rule can never fire: refused, naming the option."""
    ds = tiny_dataset(n_per_class=4, num_classes=2, size=8)
    cafe = CONDENSERS.get("cafe")
    for cap in ("max_outer_steps", "max_inner_epochs"):
        with pytest.raises(SmallsetError, match=f"{cap} \\(3\\) is below watch_window \\(10\\)") as e:
            cafe(CAFEConfig(iterations=1, watch_window=10, **{cap: 3})).condense(ds, 1, small_ctx())
        assert e.value.option == cap
    cafe(CAFEConfig(iterations=1, watch_window=3, max_outer_steps=3, max_inner_epochs=3, batch_real=4,
                    probe_per_class=4)).condense(ds, 1, small_ctx())  # at the window: allowed


# --- features and losses against re-implementations from the doc --------------------------------------------
# CAFE (docs/methods/cafe.md#cafe-features, #cafe-losses): the features CAFE aligns are the post-ReLU block
# outputs, and the image step's gradient flows through the synthetic class centres of the discrimination loss.
# Both checked against re-implementations written here from the doc's formulas (issue 10: a pre-ReLU
# ``layer_outputs`` and a detached discrimination term went unnoticed by the rest of the suite).

IPC = 2


def manual_features(net: ConvNet, x: torch.Tensor, pre_relu: list | None = None) -> list[torch.Tensor]:
    """f1..f_depth: conv → norm → ReLU of every block (before pooling), then the last pooled map; written from
    docs/methods/cafe.md#cafe-features with functional ops and the net's own weights."""
    outs = []
    for block in net.blocks:
        conv, norm = block[0], block[1]
        y = F.conv2d(x, conv.weight, conv.bias, padding=conv.padding)
        if isinstance(norm, torch.nn.GroupNorm):
            y = F.group_norm(y, norm.num_groups, norm.weight, norm.bias, norm.eps)
        if pre_relu is not None:
            pre_relu.append(y)
        y = torch.clamp(y, min=0)
        outs.append(y)
        x = F.avg_pool2d(y, 2)
    outs.append(x)
    return outs


@pytest.mark.parametrize("norm,depth", [("instancenorm", 2), ("instancenorm", 3), ("none", 2)])
def test_layer_outputs_are_post_relu_block_outputs_by_hand(norm, depth):
    net = ConvNet(2, 3, (8, 8), width=3, depth=depth, norm=norm)
    # Known weights: a fixed pattern per layer, with negative biases/shifts so that ReLU has work to do.
    with torch.no_grad():
        for d, block in enumerate(net.blocks):
            conv = block[0]
            n = conv.weight.numel()
            conv.weight.copy_(torch.sin(torch.arange(n, dtype=torch.float32) * 0.7 + d).view_as(conv.weight) * 0.4)
            conv.bias.copy_(torch.linspace(-0.3, 0.2, conv.bias.numel()))
            if isinstance(block[1], torch.nn.GroupNorm):
                block[1].weight.copy_(torch.tensor([1.5, 0.5, 1.0]))
                block[1].bias.copy_(torch.tensor([-0.2, 0.1, 0.0]))
    x = torch.randn(4, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    pre = []
    want = manual_features(net, x, pre)
    got = net.layer_outputs(x)
    assert len(got) == depth + 1
    assert all((p < 0).any() for p in pre), "the hand-made weights must give negative pre-activations"
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape
        assert (g >= 0).all(), f"feature f{i + 1} has negative entries: not taken after the ReLU"
        assert torch.allclose(g, w, atol=1e-6), f"feature f{i + 1} differs from conv → norm → ReLU by hand"
    # The last entry is the classifier's input (f5 = f4 flattened).
    assert torch.allclose(got[-1].flatten(1), net.embed(x), atol=1e-6)


def _cafe_after_one_step(tiny_dataset, **cfg):
    """A CAFE condenser after one image step with lr 1 and no momentum, so the step is exactly −∇L; the real
    batch is fixed (unequal class counts, class-major). Returns (cafe, net, xr, yr, syn0, ∇L)."""
    ds = tiny_dataset(n_per_class=6, num_classes=3, channels=2, size=8)
    cafe = CONDENSERS.get("cafe")(CAFEConfig(iterations=1, lr_img=1.0, momentum_img=0.0, **cfg))
    cafe.setup(ds, IPC, RunContext(seed=0, model="convnet-s", model_kwargs={"width": 8}))
    net = cafe._new_net()
    x = ds.normalized()
    xr = torch.cat([x[ds.labels == 0][:5], x[ds.labels == 1][:3], x[ds.labels == 2][:4]])
    yr = torch.tensor([0] * 5 + [1] * 3 + [2] * 4)
    cafe.sampler.batch_all = lambda n, g: (xr, yr)
    syn0 = cafe.syn.detach().clone()
    cafe._image_step(net)
    return cafe, net, xr, yr, syn0, syn0 - cafe.syn.detach()


def reference_loss(net, xr, yr, syn, k, layer_weights=(0.1, 0.1, 1.0, 1.0), w_last=1.0, w_disc=0.01):
    """L = Σ_l w_l·SSE(M_real(f_l), M_syn(f_l)) + w_last·SSE(M_syn(f5), M_real(f5))
    + w_disc·CE_sum(⟨f5(real_i), M_syn_k(f5)⟩, y_i), class by class (docs/methods/cafe.md#cafe-losses)."""
    fr, fs = manual_features(net, xr), manual_features(net, syn)
    loss = 0.0
    centres = []
    for c in range(k):
        for w, a, b in zip(layer_weights, fr, fs):
            loss = loss + w * ((a[yr == c].mean(0) - b[c * IPC:(c + 1) * IPC].mean(0)) ** 2).sum()
        mr = fr[-1][yr == c].flatten(1).mean(0)
        ms = fs[-1][c * IPC:(c + 1) * IPC].flatten(1).mean(0)
        loss = loss + w_last * ((ms - mr) ** 2).sum()
        centres.append(ms)
    logits = torch.stack([torch.stack([fr[-1][i].flatten() @ centres[c] for c in range(k)]) for i in range(len(yr))])
    return loss + w_disc * F.cross_entropy(logits, yr, reduction="sum")


def test_discrimination_gradient_flows_through_the_synthetic_centres(tiny_dataset):
    """Only the discrimination term (other weights 0): the image step equals −∇ of CE_sum(⟨f5(real_i),
    M_syn_k(f5)⟩, y_i) computed here in float64 with autograd (checked by a finite difference). Its only path to
    the synthetic pixels is the class centres M_syn_k(f5): cut it and the images do not move."""
    cafe, net, xr, yr, syn0, step = _cafe_after_one_step(
        tiny_dataset, layer_weights="0,0,0,0", weight_last=0.0, weight_discrimination=1.0)
    net64 = copy.deepcopy(net).double()
    s = syn0.double().requires_grad_(True)

    def disc(s):
        fr = net64.embed(xr.double())  # f5 of the real images (the classifier's input)
        centres = torch.stack([net64.embed(s[c * IPC:(c + 1) * IPC]).mean(0) for c in range(3)])
        return F.cross_entropy(fr @ centres.t(), yr, reduction="sum")

    want = torch.autograd.grad(disc(s), s)[0]
    # The re-implementation's own gradient against central differences on a few pixels.
    with torch.no_grad():
        for flat in (0, 37, 101, 200):
            e = torch.zeros_like(s).view(-1)
            e[flat] = 1e-6
            e = e.view_as(s)
            fd = (disc(s + e) - disc(s - e)) / 2e-6
            assert float(fd) == pytest.approx(float(want.view(-1)[flat]), rel=1e-4, abs=1e-7)
    assert float(want.abs().max()) > 1e-3
    scale = float(want.abs().max())
    err = float((step.double() - want).abs().max())
    assert err < 1e-3 * scale, (
        f"the discrimination term's gradient on the synthetic images is off by {err:.3g} (max |∇| {scale:.3g}); "
        f"|step| max {float(step.abs().max()):.3g}: is the gradient through the synthetic centres cut?")


def test_image_step_equals_the_reference_loss_gradient(tiny_dataset):
    """All three terms with the paper's weights: the step equals −∇L of the class-by-class formula over the
    post-ReLU features computed by hand, in float64."""
    cafe, net, xr, yr, syn0, step = _cafe_after_one_step(tiny_dataset)
    net64 = copy.deepcopy(net).double()
    s = syn0.double().requires_grad_(True)
    want = torch.autograd.grad(reference_loss(net64, xr.double(), yr, s, 3), s)[0]
    scale = float(want.abs().max())
    err = float((step.double() - want).abs().max())
    assert err < 2e-5 * scale, f"image step off the reference gradient by {err:.3g} (max |∇| {scale:.3g})"
    # The discrimination term matters at this precision: leaving its gradient out moves the step measurably.
    no_disc = torch.autograd.grad(reference_loss(net64, xr.double(), yr, s, 3, w_disc=0.0), s)[0]
    assert float((no_disc - want).abs().max()) > 10 * 2e-5 * scale
