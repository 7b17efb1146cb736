"""DC (docs/methods/dc.md) and DSA (docs/methods/dsa.md): the layer-wise distance by hand, the per-ipc loops,
learning on tiny data, the inner loop that trains the matching network on the synthetic set."""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import smallset.distill.dc as dc_module
from smallset.context import RunContext
from smallset.distill._matching import train_on_synthetic
from smallset.distill.base import CONDENSERS
from smallset.distill.dc import DCConfig, gradient_distance, loops_for_ipc
from smallset.distill.dsa import DSAConfig
from smallset.errors import SmallsetError
from smallset.models import create_model

EPS = 1e-6


def small_ctx(**kw):
    return RunContext(seed=0, model="convnet-s", model_kwargs={"width": 8}, **kw)


# --- the distance -----------------------------------------------------------------------------------
def test_gradient_distance_by_hand_on_explicit_tensors():
    d = torch.float64
    conv_r = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=d).view(2, 1, 1, 2)  # [out, in, kh, kw]
    conv_s = torch.tensor([[3.0, 0.0], [1.0, 0.0]], dtype=d).view(2, 1, 1, 2)
    lin_r = torch.tensor([[1.0, 1.0, 0.0]], dtype=d)
    lin_s = torch.tensor([[0.0, 1.0, 1.0]], dtype=d)
    bias_r, bias_s = torch.tensor([5.0, -5.0], dtype=d), torch.tensor([-1.0, 7.0], dtype=d)
    got = gradient_distance([conv_r, bias_r, lin_r], [conv_s, bias_s, lin_s])
    # conv row 0: cos = 3/(1·3); row 1: cos = 0; linear row: cos = 1/(√2·√2); biases: 0.
    want = (1 - 3 / (1 * 3 + EPS)) + (1 - 0 / (2 * 1 + EPS)) + (1 - 1 / (2 + EPS))
    assert float(got) == pytest.approx(want, rel=1e-12)
    # Only 1-D tensors: exactly 0.
    assert float(gradient_distance([bias_r], [bias_s])) == 0.0


def test_gradient_distance_on_a_tiny_network_matches_hand_computation():
    net = nn.Linear(2, 2).double()
    with torch.no_grad():
        net.weight.zero_()
        net.bias.zero_()
    params = list(net.parameters())
    xr, xs = torch.tensor([[1.0, 2.0]], dtype=torch.float64), torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0])
    gr = torch.autograd.grad(F.cross_entropy(net(xr), y), params)
    gs = torch.autograd.grad(F.cross_entropy(net(xs), y), params)
    # Zero weights → p = (½, ½); dL/dW = (p − e₀) xᵀ: real [[-½, -1], [½, 1]], synthetic [[-½, 0], [½, 0]].
    row_cos = 0.25 / (math.sqrt(1.25) * 0.5 + EPS)
    assert float(gradient_distance(gr, gs)) == pytest.approx(2 * (1 - row_cos), rel=1e-12)
    # The biases' gradients differ (a 1-D tensor) but add nothing: the same value without them.
    assert float(gradient_distance(gr[:1], gs[:1])) == pytest.approx(2 * (1 - row_cos), rel=1e-12)


def test_gradient_distance_rejects_mismatched_lists():
    with pytest.raises(SmallsetError):
        gradient_distance([torch.ones(2, 2)], [torch.ones(2, 3)])
    with pytest.raises(SmallsetError):
        gradient_distance([torch.ones(2, 2)], [])


# --- configuration ----------------------------------------------------------------------------------
def test_loops_table_and_fallback():
    table = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
    for ipc, loops in table.items():
        cfg = DCConfig.for_ipc(ipc)
        assert (cfg.outer_loop, cfg.inner_loop) == loops and cfg.init == "noise"
        dsa = DSAConfig.for_ipc(ipc)
        assert (dsa.outer_loop, dsa.inner_loop) == loops and dsa.init == "real"
    assert loops_for_ipc(5) == (1, 1) and loops_for_ipc(6) == (10, 50) and loops_for_ipc(15) == (10, 50)
    assert loops_for_ipc(26) == (30, 20)
    big = DCConfig.for_ipc(100)
    assert (big.outer_loop, big.inner_loop, big.init) == (50, 10, "real")
    # The base class applies CLI overrides on top of the per-ipc defaults.
    cfg = CONDENSERS.get("dc").config_for_ipc(10, outer_loop=3, inner_loop=None)
    assert (cfg.outer_loop, cfg.inner_loop, cfg.iterations) == (3, 50, 1000)


def test_bad_settings_raise(tiny_dataset):
    ds = tiny_dataset(n_per_class=4, num_classes=2, size=8)
    dc = CONDENSERS.get("dc")
    for bad in (dict(init="zeros"), dict(outer_loop=0), dict(lr_img=-1.0), dict(batch_real=0)):
        with pytest.raises(SmallsetError):
            dc(DCConfig(iterations=1, **bad)).condense(ds, 1, small_ctx())
    with pytest.raises(SmallsetError):
        dc(DCConfig(iterations=1)).condense(ds, 5, small_ctx())  # more ipc than the class has
    with pytest.raises(SmallsetError):
        CONDENSERS.get("dsa")(DSAConfig(iterations=1, dsa_strategy="color_blur")).condense(ds, 1, small_ctx())


# --- learning ----------------------------------------------------------------------------------------
def mean_matching_distance(ds, syn, ipc, nets=4):
    """Σ_c D over a fixed set of random networks (the DC objective with outer_loop 1), all real images."""
    x = ds.normalized()
    total = 0.0
    for s in range(nets):
        torch.manual_seed(1000 + s)
        net = create_model("convnet-s", ds.channels, ds.num_classes, ds.image_size, width=8)
        params = list(net.parameters())
        for c in range(ds.num_classes):
            xr = x[ds.labels == c]
            gr = torch.autograd.grad(F.cross_entropy(net(xr), torch.full((len(xr),), c)), params)
            gs = torch.autograd.grad(F.cross_entropy(net(syn[c * ipc:(c + 1) * ipc]), torch.full((ipc,), c)), params)
            total += float(gradient_distance(gr, gs))
    return total / nets


@pytest.mark.parametrize("name", ["dc", "dsa"])
def test_matching_distance_goes_down(tiny_dataset, name):
    ds = tiny_dataset(n_per_class=8, num_classes=3, size=16)
    cls = CONDENSERS.get(name)
    cfg = cls.config_for_ipc(1, iterations=20, batch_real=8, lr_img=0.01, init="noise")
    condenser = cls(cfg)
    out = condenser.condense(ds, 1, small_ctx())
    assert out.images.shape == (3, 1, 16, 16)
    assert out.labels.tolist() == [0, 1, 2]
    assert len(out.info["loss_curve"]) == 20 and out.info["iterations"] == 20
    assert out.info["mean_abs_change"] > 0.01
    before = mean_matching_distance(ds, condenser.init_images, 1)
    after = mean_matching_distance(ds, out.images, 1)
    assert after < before - 0.5, (before, after)


def test_dsa_augments_real_and_synthetic_of_one_class_together(tiny_dataset):
    """Siamese DSA: once per class and outer step, the class's real batch and its synthetic slice go
    through one augmentation call; the inner loop uses the non-Siamese call; results differ from DC."""
    ds = tiny_dataset(n_per_class=6, num_classes=3, size=8)
    ipc = 2
    cfg = DSAConfig(iterations=2, outer_loop=2, inner_loop=1, batch_real=4, lr_img=0.01)
    dsa = CONDENSERS.get("dsa")(cfg)
    calls = {"siamese": [], "plain": 0}
    orig_setup = dsa.setup

    def setup(*a, **k):
        orig_setup(*a, **k)
        aug = dsa.augment
        real_siamese, real_call = aug.siamese, aug.__call__

        class Spy:
            def siamese(self, xr, xs, generator):
                calls["siamese"].append((xr.detach().clone(), xs.detach().clone()))
                return real_siamese(xr, xs, generator=generator)

            def __call__(self, x, generator):
                calls["plain"] += 1
                return real_call(x, generator=generator)

        dsa.augment = Spy()

    dsa.setup = setup
    out = dsa.condense(ds, ipc, small_ctx())
    assert len(calls["siamese"]) == 2 * 2 * 3  # iterations × outer_loop × classes
    assert calls["plain"] == 2 * 1 * 1  # iterations × (outer_loop − 1) × inner epochs (one batch each)
    x = ds.normalized()
    for xr, xs in calls["siamese"][:3]:
        assert xr.shape == (4, 1, 8, 8) and xs.shape == (ipc, 1, 8, 8)
    # The real batch of call c holds images of class c only.
    for c, (xr, _) in enumerate(calls["siamese"][:3]):
        own = x[ds.labels == c]
        assert all(any(torch.equal(r, o) for o in own) for r in xr)
    cfg_dc = DCConfig(**{k: getattr(cfg, k) for k in DCConfig.__dataclass_fields__})
    out_dc = CONDENSERS.get("dc")(cfg_dc).condense(ds, ipc, small_ctx())
    assert not torch.equal(out.images, out_dc.images)


def test_same_seed_same_result_and_other_seed_differs(tiny_dataset):
    ds = tiny_dataset(n_per_class=5, num_classes=2, size=8)
    cfg = DCConfig(iterations=2, outer_loop=2, inner_loop=1, batch_real=3)
    a = CONDENSERS.get("dc")(cfg).condense(ds, 2, small_ctx())
    b = CONDENSERS.get("dc")(cfg).condense(ds, 2, small_ctx())
    c = CONDENSERS.get("dc")(cfg).condense(ds, 2, RunContext(seed=1, model="convnet-s", model_kwargs={"width": 8}))
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)


# --- the inner loop -----------------------------------------------------------------------------------------
# DC's inner loop (docs/methods/dc.md#dc-algorithm): between two image steps of one outer iteration the
# network trains ``inner_loop`` epochs on the synthetic set, and the next matching step uses that trained
# network. Issue 10: switching the inner loop off went unnoticed by the rest of the suite.

def _params(net):
    return [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize("name", ["dc", "dsa"])
def test_second_outer_step_matches_with_the_network_trained_on_the_synthetic_set(tiny_dataset, monkeypatch, name):
    """Snapshot the network (weights), the synthetic set and the shuffle/augmentation generators at the start of
    every outer step (``freeze_batchnorm`` is called there with the matching network). The network of outer
    step 2 must equal a hand-run of ``train_on_synthetic`` from the network of outer step 1 on the synthetic
    set after the first image step, with the run's own shuffle stream, ``lr_net`` and ``momentum_net``."""
    ds = tiny_dataset(n_per_class=6, num_classes=3, size=8)
    ipc, inner = 2, 2
    cls = CONDENSERS.get(name)
    fields = dict(iterations=1, outer_loop=2, inner_loop=inner, batch_real=4, batch_train=4, lr_img=0.1,
                  lr_net=0.05, momentum_net=0.5, init="real")
    cfg = cls.config_cls(**fields)
    cond = cls(cfg)
    snaps = []
    real_freeze = dc_module.freeze_batchnorm

    def spy(net, sampler, generator):
        snaps.append({"net": copy.deepcopy(net), "params": _params(net), "syn": cond.syn.detach().clone(),
                      "shuffle": cond.generators["shuffle"].get_state(),
                      "aug": cond.generators["aug"].get_state()})
        return real_freeze(net, sampler, generator)

    monkeypatch.setattr(dc_module, "freeze_batchnorm", spy)
    cond.condense(ds, ipc, RunContext(seed=0, model="convnet-s", model_kwargs={"width": 8}))
    assert len(snaps) == 2, "one matching network snapshot per outer step"
    first, second = snaps
    # The network moved between the two outer steps …
    moved = max(float((a - b).abs().max()) for a, b in zip(first["params"], second["params"]))
    assert moved > 1e-4, "the network did not change between outer steps: the inner loop did not train it"
    # … by exactly inner_loop epochs of training on the synthetic set of that moment.
    net = first["net"]
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr_net, momentum=cfg.momentum_net)
    gen = torch.Generator().manual_seed(0)
    gen.set_state(first["shuffle"])
    augment = None
    if name == "dsa":
        # DSA's inner loop augments every mini-batch (non-Siamese) from the aug stream, after outer step 1's
        # Siamese draws on that stream: replay those draws (one per class; they depend on the image size only).
        aug_gen = torch.Generator().manual_seed(0)
        aug_gen.set_state(first["aug"])
        for c in range(cond.num_classes):
            cond.augment.siamese(first["syn"][c * ipc:(c + 1) * ipc], generator=aug_gen)
        augment = lambda xb: cond.augment(xb, generator=aug_gen)  # noqa: E731
    train_on_synthetic(net, opt, second["syn"], cond.labels, inner, cfg.batch_train, gen, augment)
    for got, want in zip(second["params"], _params(net)):
        assert torch.allclose(got, want, rtol=0, atol=1e-6), (
            f"outer step 2 matches with a network {float((got - want).abs().max()):.3g} away from inner_loop "
            f"epochs of training on the synthetic set")


def test_no_inner_loop_leaves_the_network_unchanged(tiny_dataset, monkeypatch):
    """The counter-check: with inner_loop 0 the second outer step matches with the very same network."""
    ds = tiny_dataset(n_per_class=6, num_classes=3, size=8)
    cond = CONDENSERS.get("dc")(DCConfig(iterations=1, outer_loop=2, inner_loop=0, batch_real=4, batch_train=4))
    snaps = []
    real_freeze = dc_module.freeze_batchnorm

    def spy(net, sampler, generator):
        snaps.append(_params(net))
        return real_freeze(net, sampler, generator)

    monkeypatch.setattr(dc_module, "freeze_batchnorm", spy)
    cond.condense(ds, 2, RunContext(seed=0, model="convnet-s", model_kwargs={"width": 8}))
    assert len(snaps) == 2
    assert all(torch.equal(a, b) for a, b in zip(*snaps))
