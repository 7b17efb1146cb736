"""DM (docs/methods/dm.md): the batched loss equals the per-class reference loop, the image step,
the loss falls, real batches, exact checkpoint/resume, config and errors."""
import dataclasses
import typing

import pytest
import torch

from smallset.context import RunContext
from smallset.errors import SmallsetError
from smallset.distill import CONDENSERS
from smallset.distill.base import init_synthetic, to_dataset
from smallset.distill.dm import DMCondenser, DMConfig

MODEL_KW = {"width": 8, "depth": 2}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def ctx(seed=0, **kw):
    return RunContext(seed=seed, model="convnet-s", model_kwargs=dict(MODEL_KW), **kw)


def make(iterations=4, **kw):
    return DMCondenser(DMCondenser.config_for_ipc(2, iterations=iterations, batch_real=kw.pop("batch_real", 8), **kw))


def test_registered_with_paper_defaults():
    assert CONDENSERS.get("dm") is DMCondenser
    c = DMConfig()
    assert (c.iterations, c.lr_img, c.momentum, c.batch_real, c.init, c.dsa, c.dsa_strategy) == \
        (20000, 1.0, 0.5, 256, "real", True, "")
    assert DMConfig.for_ipc(10).lr_img == 1.0 and DMConfig.for_ipc(100).lr_img == 10.0
    forbidden = {"source", "method", "fraction", "ipc", "model", "protocol", "seed", "device", "output",
                 "eval_runs", "data_root", "no_eval", "runner", "force"}
    hints = typing.get_type_hints(DMConfig)
    for f in dataclasses.fields(DMConfig):
        assert f.name not in forbidden and f.metadata.get("help")
        assert hints[f.name] in (int, float, str, bool) or typing.get_origin(hints[f.name]) is typing.Literal


def test_batched_loss_and_step_equal_the_per_class_reference(tiny_dataset):
    """One step: the batched loss equals Σ_c ‖mean embed(real_c) − mean embed(syn_c)‖² computed class by
    class, and the images move by −lr_img·∇ (first SGD step, empty momentum)."""
    ds = tiny_dataset(n_per_class=12, num_classes=3, channels=1, size=8)
    dm = make(dsa=False, lr_img=0.5)
    dm.setup(ds, 2, ctx())
    states = {k: g.get_state() for k, g in dm.generators.items()}
    net = dm._network()
    idx = dm._real_batch().cpu()
    x = ds.normalized()
    syn0 = dm.syn.detach().clone().requires_grad_(True)
    ref = 0.0
    for c in range(3):
        rows = idx[ds.labels[idx] == c]
        assert len(rows) == 8 and len(set(rows.tolist())) == 8  # batch_real distinct examples of class c
        er = net.embed(x[rows]).mean(0)
        es = net.embed(syn0[2 * c:2 * c + 2]).mean(0)
        ref = ref + ((er - es) ** 2).sum()
    ref.backward()
    for k, g in dm.generators.items():
        g.set_state(states[k])
    loss = dm.step(0)
    assert loss == pytest.approx(float(ref.detach()), rel=1e-5)
    assert torch.allclose(dm.syn.detach(), syn0.detach() - 0.5 * syn0.grad, atol=1e-6)


def test_real_batches_use_whole_small_classes(tiny_dataset):
    ds = tiny_dataset(n_per_class=10, num_classes=2, channels=1, size=8)
    keep = torch.cat([torch.nonzero(ds.labels == 0).flatten(), torch.nonzero(ds.labels == 1).flatten()[:4]])
    ds = ds.subset(keep)  # class 0: 10 examples, class 1: 4
    dm = make(batch_real=6, dsa=False)
    dm.setup(ds, 2, ctx())
    for _ in range(3):
        idx = dm._real_batch().cpu()
        labels = ds.labels[idx]
        assert labels.tolist() == [0] * 6 + [1] * 4
        assert sorted(idx[4 + 2:].tolist()) == sorted(torch.nonzero(ds.labels == 1).flatten().tolist())
        assert len(set(idx.tolist())) == 10
    assert dm.step(0) > 0


def _fixed_objective(syn, ds, nets):
    """DM's objective on full class means, averaged over fixed networks (no sampling, no augmentation)."""
    x, total = ds.normalized(), 0.0
    k, ipc = ds.num_classes, len(syn) // ds.num_classes
    with torch.no_grad():
        for net in nets:
            er = torch.stack([net.embed(x[ds.labels == c]).mean(0) for c in range(k)])
            es = net.embed(syn).view(k, ipc, -1).mean(1)
            total += float(((er - es) ** 2).sum())
    return total / len(nets)


@pytest.mark.parametrize("dsa", [False, True])
def test_loss_falls(tiny_dataset, dsa):
    ds = tiny_dataset(n_per_class=16, num_classes=3, channels=3, size=8)
    from smallset.models import create_model

    torch.manual_seed(123)
    nets = [create_model("convnet-s", 3, 3, (8, 8), **MODEL_KW) for _ in range(6)]
    dm = make(iterations=40, dsa=dsa, init="noise")
    out = dm.condense(ds, 2, ctx())
    init, _ = init_synthetic(ds, 2, "noise", ctx().generator(401))  # DM's own init stream
    before, after = _fixed_objective(init, ds, nets), _fixed_objective(out.images, ds, nets)
    assert after < 0.5 * before
    curve = out.info["loss_curve"]
    assert len(curve) == 40 and sum(curve[-10:]) < 0.7 * sum(curve[:10])
    assert out.images.shape == (6, 3, 8, 8) and out.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert out.info["dsa_strategy"] == ("color_crop_cutout_flip_scale_rotate" if dsa else "none")
    back = to_dataset(out, ds)
    assert back.images.shape == (6, 3, 8, 8)


def test_same_seed_same_result_other_seed_differs(tiny_dataset):
    ds = tiny_dataset(n_per_class=8, num_classes=2, channels=1, size=8)
    a = make(iterations=3).condense(ds, 2, ctx(seed=1)).images
    b = make(iterations=3).condense(ds, 2, ctx(seed=1)).images
    c = make(iterations=3).condense(ds, 2, ctx(seed=2)).images
    assert torch.equal(a, b) and not torch.equal(a, c)


class _Interrupted(Exception):
    pass


def test_resume_is_exact(tiny_dataset, tmp_path):
    ds = tiny_dataset(n_per_class=10, num_classes=3, channels=3, size=8)
    total = 6
    straight = make(iterations=total).condense(ds, 2, ctx())

    class Crashing(DMCondenser):
        def step(self, it):
            if it == 4:
                raise _Interrupted
            return super().step(it)

    crashing = Crashing(DMCondenser.config_for_ipc(2, iterations=total, batch_real=8))
    with pytest.raises(_Interrupted):
        crashing.condense(ds, 2, ctx(checkpoint_dir=tmp_path, checkpoint_every=2, resume=True))
    assert (tmp_path / "checkpoint.pt").exists()
    resumed = make(iterations=total).condense(ds, 2, ctx(checkpoint_dir=tmp_path, checkpoint_every=2, resume=True))
    assert resumed.info["resumed_from"] == 4
    assert torch.equal(resumed.images, straight.images)
    assert resumed.info["loss_curve"] == straight.info["loss_curve"]
    # the checkpoint belongs to these settings: other settings refuse to resume from it
    with pytest.raises(SmallsetError, match="checkpoint"):
        make(iterations=total, lr_img=0.3).condense(ds, 2, ctx(checkpoint_dir=tmp_path, resume=True))


def test_bad_settings_raise(tiny_dataset):
    ds = tiny_dataset(n_per_class=5, num_classes=2, channels=1, size=8)
    with pytest.raises(SmallsetError, match="ipc"):
        make().condense(ds, 6, ctx())
    with pytest.raises(SmallsetError, match="init"):
        make(init="zeros").condense(ds, 2, ctx())
    with pytest.raises(SmallsetError, match="DSA"):
        make(dsa_strategy="crop_blur").condense(ds, 2, ctx())
    with pytest.raises(SmallsetError, match="batch_real"):
        make(batch_real=0).condense(ds, 2, ctx())
