"""InfoBatch (prune/infobatch.py; docs/methods/infobatch.md): the pruning set, the rescale factor and the annealing
on scripted losses, the recorded losses, r = 0 as plain SGD, the epoch budget, the returned weights, determinism
and bad options."""
import math

import pytest
import torch
import torch.nn.functional as F

from smallset import prune  # noqa: F401  (registers every selector)
from smallset.context import RunContext
from smallset.errors import SmallsetError
from smallset.models import seeded_model
from smallset.prune import infobatch
from smallset.prune.base import SELECTORS
from smallset.prune.crest import CrestConfig
from smallset.prune.infobatch import (
    InfoBatchConfig,
    InfoBatchSelector,
    _InfoBatch,
    anneal_epoch,
    is_pruning_epoch,
    prune_plan,
    run_epochs,
    schedule_epoch,
)


def cfg(**kw):
    base = dict(epochs=8, batch_size=8, warmup_epochs=0, lr_milestones="", lr=0.05)
    base.update(kw)
    return InfoBatchConfig(**base)


def ctx(seed=0, test=None):
    return RunContext(seed=seed, model="mlp", model_kwargs={"width": 16}, test=test)


def test_registered_with_the_papers_r_and_delta_and_crests_recipe():
    assert SELECTORS.get("infobatch") is InfoBatchSelector
    c, crest = InfoBatchConfig(), CrestConfig()
    assert (c.prune_ratio, c.delta) == (0.5, 0.875)
    for name in ("epochs", "batch_size", "lr", "momentum", "weight_decay", "warmup_epochs", "lr_milestones",
                 "lr_gamma", "augment", "test_every"):
        assert getattr(c, name) == getattr(crest, name), name  # same names, same meaning, same defaults


def test_prune_plan_on_scripted_losses():
    h = torch.tensor([0.1, 0.5, 2.0, 3.0, 0.2, 4.0, 0.3, 1.0])  # mean 1.3875
    kept, w, n_cand = prune_plan(h, 0.5, torch.Generator().manual_seed(0))
    below = {0, 1, 4, 6, 7}  # strictly below the mean
    assert n_cand == 5
    k = kept.tolist()
    assert len(k) == len(set(k)) == 3 + math.floor(0.5 * 5)  # all of {2, 3, 5} plus ⌊(1 − r)·|W|⌋ of W
    assert {2, 3, 5} <= set(k)
    for i, wi in zip(k, w.tolist()):
        assert wi == (2.0 if i in below else 1.0)  # rescale 1/(1 − r) on kept candidates only
    # r = 0.25: ⌊0.75·5⌋ = 3 candidates kept with weight 4/3
    kept, w, _ = prune_plan(h, 0.25, torch.Generator().manual_seed(0))
    assert len(kept) == 6 and sorted(w.tolist()) == pytest.approx([1.0] * 3 + [4 / 3] * 3)
    # strict inequality: examples at the mean are not candidates; constant losses prune nothing
    kept, w, n_cand = prune_plan(torch.tensor([0.0, 2.0, 1.0]), 0.5, torch.Generator())
    assert n_cand == 1 and sorted(kept.tolist()) == [1, 2]
    kept, w, n_cand = prune_plan(torch.full((5,), 3.0), 0.5, torch.Generator())
    assert n_cand == 0 and sorted(kept.tolist()) == list(range(5)) and bool((w == 1).all())
    # the expected gradient sum is preserved: Σ weights of kept candidates = ⌊(1 − r)|W|⌋/(1 − r) ≈ |W|
    h = torch.rand(1000, generator=torch.Generator().manual_seed(1))
    kept, w, n_cand = prune_plan(h, 0.5, torch.Generator().manual_seed(2))
    assert float(w[w > 1].sum()) == pytest.approx(math.floor(0.5 * n_cand) / 0.5)


def test_annealing_epochs():
    assert [is_pruning_epoch(e, 8, 0.875) for e in range(8)] == [True] * 7 + [False]
    assert anneal_epoch(8, 0.875) == 7
    assert anneal_epoch(200, 0.875) == 175 and is_pruning_epoch(174, 200, 0.875)
    assert not is_pruning_epoch(175, 200, 0.875)  # the last 25 = 12.5 % of 200 epochs are full
    assert not any(is_pruning_epoch(e, 10, 0.0) for e in range(10))  # δ = 0: the README's baseline
    assert all(is_pruning_epoch(e, 10, 1.0) for e in range(10))


def test_epoch_budget_and_compressed_schedule():
    assert run_epochs(200, 1.0) == 200 and run_epochs(200, 0.1) == 20 and run_epochs(10, 0.01) == 1
    assert [schedule_epoch(e, 200, 200) for e in (0, 1, 199)] == [0, 1, 199]  # fraction 1: the schedule itself
    assert [schedule_epoch(e, 4, 200) for e in range(4)] == [25, 75, 125, 175]  # the middle of each span


def test_run_records_raw_losses_and_uses_the_rescaled_loss(tiny_dataset, monkeypatch):
    """A scripted loss vector drives the plan of epoch 1; the weights reaching the loss are 1/(1 − r) on kept
    candidates; H holds the raw (unweighted) per-example losses of the forward pass."""
    ds = tiny_dataset(n_per_class=4, num_classes=3)  # N = 12
    run = _InfoBatch(cfg(epochs=4, batch_size=5, warmup_epochs=1), ds, 1.0, ctx())
    assert run.lr(0) == 0.0  # warm-up epoch 0 at LR 0: forward only
    before = [p.detach().clone() for p in run.model.parameters()]
    ep0 = run.train_epoch(0)
    assert ep0["kept"] == 12 and ep0["candidates"] == 0  # epoch 0 is full (constant initial H)
    assert all(torch.equal(a, b) for a, b in zip(before, run.model.parameters()))
    with torch.no_grad():
        want = F.cross_entropy(run.model(ds.normalized()), ds.labels, reduction="none")
    assert torch.allclose(run.scores, want, atol=1e-6)
    assert float(run.counts.sum()) == 0  # LR-0 passes are not training uses

    scripted = torch.tensor([0.1, 5.0, 0.2, 6.0, 0.3, 7.0, 0.4, 8.0, 0.5, 9.0, 0.6, 1.0])  # mean 3.2417
    run.scores = scripted.clone()
    seen = []
    real = infobatch.weighted_loss

    def spy(logits, targets, weights):
        loss, losses = real(logits, targets, weights)
        seen.append((weights.clone(), losses.clone()))
        return loss, losses

    monkeypatch.setattr(infobatch, "weighted_loss", spy)
    gen_state = run.gen.get_state()
    ep1 = run.train_epoch(1)
    plan_order, plan_w, n_cand = prune_plan(scripted, 0.5, torch.Generator().set_state(gen_state))
    assert n_cand == 7 and ep1["candidates"] == 7 and ep1["kept"] == 5 + 3
    weights = torch.cat([w for w, _ in seen])
    assert torch.equal(weights, plan_w)  # the plan's weights reach the loss, in the plan's order
    assert sorted(weights.tolist()) == [1.0] * 5 + [2.0] * 3
    raw = torch.cat([losses for _, losses in seen])
    assert torch.equal(run.scores[plan_order], raw)  # H ← the raw losses, not the weighted ones
    skipped = torch.tensor([i for i in range(12) if i not in plan_order.tolist()])
    assert torch.equal(run.scores[skipped], scripted[skipped])  # unvisited examples keep their H
    assert torch.equal(run.counts[plan_order], torch.ones(8)) and float(run.counts.sum()) == 8


def test_zero_prune_ratio_is_plain_sgd(tiny_dataset):
    ds = tiny_dataset(n_per_class=6, num_classes=3)
    c = cfg(prune_ratio=0.0, epochs=3, lr_milestones="2", momentum=0.9, weight_decay=5e-4)
    sel = InfoBatchSelector(c)
    out = sel.select(ds, 1.0, ctx(seed=5))
    # the same thing by hand: same initial weights, same shuffles, SGD on the mean loss
    model = seeded_model("mlp", 1, 3, (8, 8), 5, width=16)
    opt = torch.optim.SGD(model.parameters(), lr=c.lr, momentum=0.9, weight_decay=5e-4)
    gen = ctx(seed=5).generator(1)
    x, y = ds.normalized(), ds.labels
    for epoch in range(3):
        for g in opt.param_groups:
            g["lr"] = c.lr * (0.1 if epoch >= 2 else 1.0)
        perm = torch.randperm(len(ds), generator=gen)
        for s in range(0, len(ds), c.batch_size):
            idx = perm[s:s + c.batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    for a, b in zip(model.parameters(), sel.trained_model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert out.info["epoch_kept"] == [18.0] * 3 and torch.equal(out.weights, torch.full((18,), 3.0))


def test_full_run_info_weights_and_determinism(tiny_dataset):
    ds = tiny_dataset(n_per_class=16, num_classes=3, noise=0.4)
    test = tiny_dataset(n_per_class=5, num_classes=3, noise=0.4, seed=1)
    c = cfg(epochs=8, delta=0.75, test_every=4, augment="crop_flip")
    out = InfoBatchSelector(c).select(ds, 1.0, ctx(seed=1, test=test))
    info = out.info
    n = len(ds)
    assert info["epochs"] == 8 and info["anneal_epoch"] == 6
    kept, cand = info["epoch_kept"], info["epoch_candidates"]
    assert kept[0] == n and cand[0] == 0  # epoch 0 full
    assert kept[6:] == [n, n] and cand[6:] == [0, 0]  # annealing: epochs 6 and 7 full
    for k, w in zip(kept[1:6], cand[1:6]):
        assert w > 0 and k == n - w + math.floor(0.5 * w)
    assert info["image_passes"] == sum(kept) and info["full_image_passes"] == 8 * n
    assert info["pass_fraction"] == pytest.approx(sum(kept) / (8 * n)) and info["saved_fraction"] > 0
    assert float(out.weights.sum()) == info["image_passes"]  # weights = epochs each example was trained on
    assert bool((out.weights >= 3).all()) and bool((out.weights <= 8).all())  # epochs 0, 6 and 7 use everyone
    assert 0 <= info["test_accuracy"] <= 1 and len(info["epoch_test_accuracy"]) == 2
    again = InfoBatchSelector(c).select(ds, 1.0, ctx(seed=1, test=test))
    assert torch.equal(again.weights, out.weights) and again.info["epoch_loss"] == info["epoch_loss"]
    other = InfoBatchSelector(c).select(ds, 1.0, ctx(seed=2, test=test))
    assert other.info["epoch_loss"] != info["epoch_loss"]


def test_fraction_scales_the_epoch_budget(tiny_dataset):
    ds = tiny_dataset(n_per_class=6, num_classes=3)
    out = InfoBatchSelector(cfg(epochs=8)).select(ds, 0.5, ctx())
    assert out.info["epochs"] == 4 and out.info["full_image_passes"] == 8 * 18
    assert out.info["pass_fraction"] <= 0.5
    with pytest.raises(SmallsetError, match="positive learning rate"):
        InfoBatchSelector(cfg(epochs=1, warmup_epochs=1)).select(ds, 1.0, ctx())  # one epoch, at LR 0
    # a compressed run takes each epoch's LR from the middle of its span: no LR-0 epoch at 10 % of 10 epochs
    assert InfoBatchSelector(cfg(epochs=10, warmup_epochs=20)).select(ds, 0.1, ctx()).info["epoch_lr"] == [0.0125]


@pytest.mark.parametrize("field,value", [("prune_ratio", 1.0), ("prune_ratio", -0.1), ("delta", 1.5),
                                         ("epochs", 0), ("batch_size", 0), ("warmup_epochs", -1), ("lr", -1.0),
                                         ("momentum", -0.5), ("lr_gamma", 0.0), ("lr_milestones", "a,b"),
                                         ("augment", "mixup"), ("test_every", -1)])
def test_bad_options_are_refused_with_one_sentence(tiny_dataset, field, value):
    ds = tiny_dataset(n_per_class=2, num_classes=2)
    with pytest.raises(SmallsetError) as err:
        InfoBatchSelector(InfoBatchSelector.make_config({field: value})).select(ds, 1.0, ctx())
    assert err.value.option == field
    assert str(err.value).endswith(".") and "\n" not in str(err.value)
    with pytest.raises(SmallsetError):
        InfoBatchSelector().select(ds, 0.0, ctx())


def test_weighted_loss_is_the_mean_of_weighted_losses():
    logits = torch.zeros(2, 2)  # CE = ln 2 for each example
    loss, raw = infobatch.weighted_loss(logits, torch.tensor([0, 1]), torch.tensor([1.0, 2.0]))
    assert float(loss) == pytest.approx(1.5 * math.log(2))  # mean(w·ℓ), not Σw·ℓ/Σw (= ln 2)
    assert raw.tolist() == pytest.approx([math.log(2)] * 2) and not raw.requires_grad


def test_crest_takes_the_same_augmentation_option(tiny_dataset):
    from smallset.prune.crest import CrestSelector

    ds = tiny_dataset(n_per_class=6, num_classes=3)
    smoke = dict(CrestSelector.smoke)
    plain = CrestSelector(CrestSelector.make_config(smoke))
    aug = CrestSelector(CrestSelector.make_config({**smoke, "augment": "crop_flip"}))
    losses = [s.select(ds, 0.5, ctx(seed=3)).info["epoch_loss"] for s in (plain, aug, aug)]
    assert losses[1] == losses[2] and losses[0] != losses[1]  # deterministic, and the batches are augmented
    with pytest.raises(SmallsetError) as err:
        CrestSelector.make_config({"augment": "mixup"})
    assert err.value.option == "augment"
