"""CAFE (docs/methods/cafe.md#cafe-features, #cafe-losses): the features CAFE aligns are the post-ReLU block
outputs, and the image step's gradient flows through the synthetic class centres of the discrimination loss.
Both checked against re-implementations written here from the doc's formulas (issue 10: a pre-ReLU
``layer_outputs`` and a detached discrimination term went unnoticed by the rest of the suite)."""
import copy

import pytest
import torch
import torch.nn.functional as F

from smallset.context import RunContext
from smallset.distill.base import CONDENSERS
from smallset.distill.cafe import CAFEConfig
from smallset.models import ConvNet

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread

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
