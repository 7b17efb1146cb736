"""Issue 15: the condensers stream their real side in chunks on the CPU (distill/_streaming.py), keep the
training images once (pixel scale, normalised per batch), pool with a faster 2×2 kernel, and model their
memory for the pre-run estimate (docs/methods/condenser-memory.md). Every change keeps the maths: chunked
and whole-batch runs give the same losses and image updates, the normalised rows are bit-identical."""
import copy

import pytest
import torch
import torch.nn.functional as F

import smallset.distill._streaming as streaming
from smallset.context import RunContext
from smallset.data import channel_stats
from smallset.distill.base import CONDENSERS, init_synthetic
from smallset.distill.cafe import CAFEConfig
from smallset.distill.dc import DCConfig
from smallset.distill.dm import DMConfig
from smallset.distill.dsa import DSAConfig
from smallset.models import ConvNet, _AvgPool2, avg_pool2, create_model


def ctx(**kw):
    return RunContext(seed=0, model="convnet-s", model_kwargs={"width": 8, "depth": 2}, **kw)


def _run(cls, cfg, ds, ipc, chunk, monkeypatch, steps=2):
    """``steps`` iterations with every real forward streamed ``chunk`` rows at a time."""
    monkeypatch.setattr(streaming, "CPU_CHUNK", chunk)
    cond = cls(copy.deepcopy(cfg))
    cond.setup(ds, ipc, ctx())
    losses = [cond.step(it) for it in range(steps)]
    return losses, cond.syn.detach().clone()


@pytest.mark.parametrize("name,cfg", [
    ("dm", DMConfig(iterations=2, batch_real=7, dsa=True)),
    ("dm", DMConfig(iterations=2, batch_real=7, dsa=False, init="noise")),
    ("dc", DCConfig(iterations=2, outer_loop=2, inner_loop=1, batch_real=7, batch_train=4, init="real")),
    ("dsa", DSAConfig(iterations=2, outer_loop=2, inner_loop=1, batch_real=7, batch_train=4)),
])
def test_chunked_real_side_gives_the_same_losses_and_images(tiny_dataset, monkeypatch, name, cfg):
    """Chunks of 3 real images (uneven: 7 per class) against one batch: same losses and synthetic images."""
    ds = tiny_dataset(n_per_class=9, num_classes=3, channels=3, size=8)
    cls = CONDENSERS.get(name)
    whole_losses, whole = _run(cls, cfg, ds, 2, 10 ** 6, monkeypatch)
    chunk_losses, chunked = _run(cls, cfg, ds, 2, 3, monkeypatch)
    assert chunk_losses == pytest.approx(whole_losses, rel=1e-5)
    assert torch.allclose(chunked, whole, atol=1e-5)


def test_chunked_cafe_image_step_is_the_same(tiny_dataset, monkeypatch):
    ds = tiny_dataset(n_per_class=9, num_classes=3, channels=3, size=8)
    out = []
    for chunk in (10 ** 6, 4):
        monkeypatch.setattr(streaming, "CPU_CHUNK", chunk)
        cafe = CONDENSERS.get("cafe")(CAFEConfig(iterations=1, batch_real=7, probe_per_class=5,
                                                      layer_weights="0.1,1.0,1.0"))
        cafe.setup(ds, 2, ctx())
        net = cafe._new_net()
        out.append((cafe._image_step(net), cafe._probe(net), cafe.syn.detach().clone()))
    (l1, p1, s1), (l2, p2, s2) = out
    assert l2 == pytest.approx(l1, rel=1e-5) and p1 == p2 and torch.allclose(s1, s2, atol=1e-5)


def test_real_gradient_in_chunks_equals_one_backward():
    torch.manual_seed(0)
    for norm in ("instancenorm", "batchnorm"):
        net = ConvNet(3, 4, (8, 8), width=6, depth=2, norm=norm)
        if norm == "batchnorm":  # DC freezes BatchNorm (eval mode) before matching: per-image again
            net.eval()
        assert streaming.per_image(net)
        params = list(net.parameters())
        x = torch.randn(11, 3, 8, 8)
        want = torch.autograd.grad(F.cross_entropy(net(x), torch.full((11,), 2)), params)
        got = streaming.real_gradient(net, params, x, 2, 4)
        for g, w in zip(got, want):
            assert torch.allclose(g, w, atol=1e-6, rtol=1e-5)
            assert not g.requires_grad


def test_inner_loop_in_chunks_trains_the_same_network(monkeypatch):
    from smallset.distill._matching import train_on_synthetic

    torch.manual_seed(0)
    x, y = torch.randn(10, 3, 8, 8), torch.arange(10) % 4
    start = ConvNet(3, 4, (8, 8), width=6, depth=2)
    nets, losses = [], []
    for chunk in (10 ** 6, 3):  # batches of 8 (chunks 3, 3, 2) and 2
        monkeypatch.setattr(streaming, "CPU_CHUNK", chunk)
        net = copy.deepcopy(start)
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.5)
        losses.append(train_on_synthetic(net, opt, x, y, 3, 8, torch.Generator().manual_seed(1)))
        nets.append(net)
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_batchnorm_in_train_mode_is_never_chunked():
    net = ConvNet(3, 4, (8, 8), width=6, depth=2, norm="batchnorm").train()
    assert not streaming.per_image(net)
    assert streaming.chunk_for("cpu", net) is None
    assert streaming.chunk_for("cpu", net.eval()) == streaming.CPU_CHUNK
    assert streaming.chunk_for("cuda") is None  # a GPU takes whole batches
    assert streaming.chunks(7, 3) == [(0, 3), (3, 6), (6, 7)] and streaming.chunks(5, None) == [(0, 5)]


def test_pixel_rows_are_the_normalised_rows_bit_for_bit(tiny_dataset):
    ds = tiny_dataset(n_per_class=5, num_classes=3, channels=3, size=8)
    rows = streaming.PixelRows(ds.images, ds.mean, ds.std, "cpu")
    assert rows.pixels.data_ptr() == ds.images.data_ptr()  # the dataset's own tensor: no copy on the CPU
    idx = torch.tensor([4, 0, 9, 9, 14])
    assert torch.equal(rows.rows(idx), ds.normalized()[idx])
    # init_synthetic normalises only the rows it picks, with the same values as before
    x = ds.normalized()
    syn, _ = init_synthetic(ds, 2, "real", torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    picks = torch.cat([i[torch.randperm(len(i), generator=g)[:2]] for i in ds.class_indices()])
    assert torch.equal(syn, x[picks])


def test_fast_pooling_is_average_pooling_with_working_double_backward():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 8, 6, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(avg_pool2(x), F.avg_pool2d(x, 2), atol=1e-15)
    assert torch.autograd.gradcheck(_AvgPool2.apply, (x,))
    assert torch.autograd.gradgradcheck(_AvgPool2.apply, (x,))
    odd = torch.randn(2, 3, 7, 8)
    assert torch.equal(avg_pool2(odd), F.avg_pool2d(odd, 2))  # odd sides: ATen's kernel
    cl = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    assert torch.equal(avg_pool2(cl), F.avg_pool2d(cl, 2))
    from torch.func import grad, vmap  # under torch.func the plain kernel is used (no vmap rule needed)

    per = vmap(grad(lambda t: avg_pool2(t.unsqueeze(0)).sum()))(torch.randn(4, 3, 8, 8))
    assert torch.allclose(per, torch.full_like(per, 0.25))
    net = create_model("convnet", 3, 10, (32, 32), width=16)
    xb = torch.randn(5, 3, 32, 32)
    ref = net.classifier(torch.flatten(_reference_embed(net, xb), 1))
    assert torch.allclose(net(xb), ref, atol=1e-5)


def _reference_embed(net, x):
    for block in net.blocks:
        x = F.avg_pool2d(block(x), 2)
    return x


def test_channel_stats_are_the_whole_set_float64_stats():
    def whole(images):  # the formula before issue 15 (a float64 copy of the whole set)
        x = images.transpose(0, 1).reshape(images.shape[1], -1).double()
        return (tuple(round(float(v), 4) for v in x.mean(1)),
                tuple(round(float(v), 4) for v in x.std(1, unbiased=False).clamp_min(1e-3)))

    g = torch.Generator().manual_seed(0)
    for shape in [(7, 3, 5, 5), (1, 1, 1, 1), (300, 1, 28, 28), (5000, 3, 4, 4)]:
        x = torch.rand(shape, generator=g) * 2 - 0.5
        assert channel_stats(x) == whole(x)
    assert channel_stats(torch.full((4, 1, 8, 8), 0.5)) == ((0.5,), (0.001,))


def test_keep_freed_memory_is_idempotent():
    first = streaming.keep_freed_memory()
    assert isinstance(first, bool) and streaming.keep_freed_memory() == first


# --- the memory model ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dm", "dc", "dsa", "cafe"])
def test_memory_model_scales_with_batch_real_ipc_and_classes(tiny_dataset, name):
    cls = CONDENSERS.get(name)
    assert cls.models_working_memory and "batch_real" in cls.memory_options
    small = tiny_dataset(n_per_class=40, num_classes=3, channels=3, size=8)
    more = tiny_dataset(n_per_class=40, num_classes=6, channels=3, size=8)

    def terms(ds, ipc, batch_real, **kw):
        return cls(cls.config_for_ipc(ipc, batch_real=batch_real, **kw)).memory_breakdown(ds, ipc, ctx())

    base = terms(small, 1, 8)
    assert sum(base.values()) == cls(cls.config_for_ipc(1, batch_real=8)).extra_memory_bytes(small, 1, ctx())
    assert terms(small, 1, 16)["real batch"] == 2 * base["real batch"]  # batch_real
    assert terms(small, 4, 8)["synthetic set"] == 4 * base["synthetic set"]  # ipc
    assert terms(small, 1, 100)["real batch"] == terms(small, 1, 40)["real batch"]  # capped by the class size
    grows = terms(more, 1, 8)
    assert grows["synthetic set"] == 2 * base["synthetic set"]  # classes
    if name in ("dm", "cafe"):  # every class's real batch at once
        assert grows["real batch"] == 2 * base["real batch"]
    else:  # one class at a time
        assert grows["real batch"] == base["real batch"]


def test_preflight_uses_the_condensers_model(tiny_dataset, monkeypatch):
    """The pre-run estimate of DM adds its own model and no generic 2,560-image batch."""
    from smallset import estimate
    from smallset.tasks import steps

    seen = {}

    def fake(ds, model, kw, batch_size, device, extra_images=0, extra_bytes=0, **more):
        seen.update(batch_size=batch_size, extra_images=extra_images, extra_bytes=extra_bytes)
        return estimate.Estimate(1, 2, 0.0, "cpu", extra_bytes)

    monkeypatch.setattr(estimate, "estimate_training", fake)
    ds = tiny_dataset(n_per_class=10, num_classes=3, channels=3, size=8)

    class Cell:
        kind, method, seed = "distill", "dm", 0
        options = type("O", (), {"model": "convnet-s", "model_kwargs": {"width": 8, "depth": 2}, "device": "cpu",
                                 "force": False, "progress": False})()
        checkpointing = type("C", (), {"directory": None, "every": 0, "resume": False})()

        def method_instance(self):
            return CONDENSERS.get("dm")(DMConfig(batch_real=8))

    steps.preflight(Cell(), ds, "dm 2 ipc", 2)
    assert seen["batch_size"] == 0 and seen["extra_images"] == 0
    assert seen["extra_bytes"] == CONDENSERS.get("dm")(DMConfig(batch_real=8)).extra_memory_bytes(ds, 2, ctx())
