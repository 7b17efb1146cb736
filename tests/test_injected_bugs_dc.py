"""DC's inner loop (docs/methods/dc.md#dc-algorithm): between two image steps of one outer iteration the
network trains ``inner_loop`` epochs on the synthetic set, and the next matching step uses that trained
network. Issue 10: switching the inner loop off went unnoticed by the rest of the suite."""
import copy

import pytest
import torch

import smallset.distill.dc as dc_module
from smallset.context import RunContext
from smallset.distill._matching import train_on_synthetic
from smallset.distill.base import CONDENSERS
from smallset.distill.dc import DCConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


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
