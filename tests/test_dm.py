"""DM (docs/methods/dm.md): the batched loss equals the per-class reference loop, the image step,
the loss falls, real batches, exact checkpoint/resume, config and errors, one Siamese augmentation per class."""
import dataclasses
import typing

import pytest
import torch

from smallset.context import RunContext
from smallset.data import ImageDataset
from smallset.distill import CONDENSERS
from smallset.distill.base import init_synthetic, to_dataset
from smallset.distill.dm import DMCondenser, DMConfig
from smallset.errors import SmallsetError

from helpers import make_tiny_dataset

MODEL_KW = {"width": 8, "depth": 2}


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


# --- Siamese augmentation -----------------------------------------------------------------------------------
# DM's Siamese augmentation (docs/methods/dm.md, docs/methods/dsa-augmentation.md#dsa-siamese): in one
# iteration the real and the synthetic images of a class go through the SAME DSA transformation, and every class
# draws its own. Checked on the tensors that actually reach the network, for any strategy (issue 10: a broken
# per-class sharing went unnoticed by the loss-threshold tests).

K, IPC, PER_CLASS = 4, 2, 4


def dataset_with_one_image_in_every_class() -> ImageDataset:
    """4 classes × 4 images (3×8×8); the first image of every class is the same image S."""
    ds = make_tiny_dataset(n_per_class=PER_CLASS, num_classes=K, channels=3, size=8, seed=5)
    images = ds.images.clone()
    firsts = [int(torch.nonzero(ds.labels == c)[0]) for c in range(K)]
    for i in firsts[1:]:
        images[i] = images[firsts[0]]
    return ImageDataset(images, ds.labels.clone(), list(ds.classes), ds.mean, ds.std, name="tiny-shared",
                        source_index=torch.arange(len(ds.labels)))


@pytest.mark.parametrize("strategy", ["color_crop_cutout_flip_scale_rotate", "crop", "color"])
def test_real_and_synthetic_of_a_class_share_one_transformation_and_classes_draw_their_own(strategy):
    """Synthetic images start as copies of real images (init real) and the real batch holds every image of its
    class, so under Siamese augmentation each synthetic image, augmented, equals the augmented copy of its
    source in the real batch. The image S present in every class must come out differently in at least two
    classes (independent draws per class). Checked over several iterations (the synthetic set reset to its
    initial copies before each), and the step's loss equals Σ_c ‖mean e(real_c) − mean e(syn_c)‖² computed
    class by class on the augmented tensors the network saw."""
    ds = dataset_with_one_image_in_every_class()
    x = ds.normalized()
    dm = DMCondenser(DMConfig(iterations=3, batch_real=8, init="real", dsa=True, dsa_strategy=strategy, lr_img=1.0))
    dm.setup(ds, IPC, RunContext(seed=3, model="convnet-s", model_kwargs={"width": 8, "depth": 2}))
    syn_init = dm.syn.detach().clone()
    seen, batches, nets = [], [], []
    real_network, real_batch = dm._network, dm._real_batch

    def network():
        net = real_network()
        embed = net.embed

        def spy(inp):
            seen.append(inp.detach().clone())
            return embed(inp)

        net.embed = spy
        nets.append((net, embed))
        return net

    def batch():
        idx = real_batch()
        batches.append(idx.cpu().clone())
        return idx

    dm._network, dm._real_batch = network, batch
    # Where each synthetic image came from (its real copy, searched within its own class).
    sources = []
    for j in range(K * IPC):
        c = j // IPC
        own = torch.nonzero(ds.labels == c).flatten()
        match = [int(i) for i in own if torch.equal(x[i], syn_init[j])]
        assert len(match) == 1
        sources.append(match[0])
    shared = [int(torch.nonzero(ds.labels == c)[0]) for c in range(K)]  # S in class c

    for it in range(3):
        with torch.no_grad():
            dm.syn.copy_(syn_init)
        seen.clear()
        loss = dm.step(it)
        xr_aug, xs_aug = seen  # the real batch, then the synthetic set
        idx = batches[-1]
        assert ds.labels[idx].tolist() == [c for c in range(K) for _ in range(PER_CLASS)]  # whole classes
        pos = {int(i): p for p, i in enumerate(idx)}
        for j, src in enumerate(sources):
            assert torch.allclose(xs_aug[j], xr_aug[pos[src]], atol=1e-5), (
                f"iteration {it}: synthetic image {j} (class {j // IPC}) and its real copy got different "
                f"augmentations: real and synthetic of one class must share one DSA transformation")
        s_views = [xr_aug[pos[i]] for i in shared]
        distinct = [v for n, v in enumerate(s_views) if not any(torch.allclose(v, w, atol=1e-5) for w in s_views[:n])]
        assert len(distinct) > 1, (
            f"iteration {it}: the image present in all {K} classes came out identical in every class: the classes "
            f"did not draw their own transformations")
        # The loss is built from these tensors, class by class.
        net, embed = nets[-1]
        with torch.no_grad():
            er, es = embed(xr_aug), embed(xs_aug)
            want = sum(float(((er[PER_CLASS * c:PER_CLASS * (c + 1)].mean(0) - es[IPC * c:IPC * (c + 1)].mean(0)) ** 2)
                             .sum()) for c in range(K))
        assert loss == pytest.approx(want, rel=1e-5)


def test_augmentation_differs_between_iterations():
    """Fresh draws every iteration: the same class's augmented synthetic images differ between two steps that
    start from the same synthetic set."""
    ds = dataset_with_one_image_in_every_class()
    dm = DMCondenser(DMConfig(iterations=2, batch_real=8, init="real", dsa=True,
                              dsa_strategy="color_crop_cutout_flip_scale_rotate"))
    dm.setup(ds, IPC, RunContext(seed=3, model="convnet-s", model_kwargs={"width": 8, "depth": 2}))
    syn_init = dm.syn.detach().clone()
    seen = []
    real_network = dm._network

    def network():
        net = real_network()
        embed = net.embed
        net.embed = lambda inp: (seen.append(inp.detach().clone()), embed(inp))[1]
        return net

    dm._network = network
    for it in range(2):
        with torch.no_grad():
            dm.syn.copy_(syn_init)
        dm.step(it)
    assert not torch.allclose(seen[1], seen[3])
