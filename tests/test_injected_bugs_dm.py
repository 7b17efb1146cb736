"""DM's Siamese augmentation (docs/methods/dm.md, docs/methods/dsa-augmentation.md#dsa-siamese): in one
iteration the real and the synthetic images of a class go through the SAME DSA transformation, and every class
draws its own. Checked on the tensors that actually reach the network, for any strategy (issue 10: a broken
per-class sharing went unnoticed by the loss-threshold tests)."""
import pytest
import torch

from smallset.context import RunContext
from smallset.data import ImageDataset
from smallset.distill.dm import DMCondenser, DMConfig
from helpers import make_tiny_dataset

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread

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
