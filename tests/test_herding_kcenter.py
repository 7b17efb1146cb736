"""Herding and k-center greedy (prune/herding.py, prune/kcenter.py) on hand-checkable 2-D point sets."""
import pytest
import torch

from smallset import prune  # noqa: F401
from smallset.context import RunContext
from smallset.data import ImageDataset
from smallset.errors import SmallsetError
from smallset.prune._features import FeatureConfig
from smallset.prune.base import SELECTORS, class_budgets
from smallset.prune.herding import HerdingSelector, herding_order
from smallset.prune.kcenter import KCenterSelector, kcenter_order

CTX = dict(model="mlp", model_kwargs={"width": 8})


def _pts(*xy):
    return torch.tensor(xy, dtype=torch.float64)


def test_registered_and_pinned_attributes():
    assert SELECTORS.get("herding") is HerdingSelector and SELECTORS.get("kcenter") is KCenterSelector
    for cls in (HerdingSelector, KCenterSelector):
        assert cls.higher_is_keep is None  # score() returns features, not a ranking
        assert cls.uses_model is True
        assert set(cls().prepare_params()) == {"feature_epochs", "feature_lr"}


def test_herding_order_by_hand():
    # points on a line: 0, 1, 2, 10; μ = 3.25
    # step 0: target 3.25 → 2; step 1: target 6.5 − 2 = 4.5 → 1 (3.5 away; 0 is 4.5, 10 is 5.5);
    # step 2: target 9.75 − 3 = 6.75 → 10 (3.25 away; 0 is 6.75); step 3: 0.
    f = _pts([0, 0], [1, 0], [2, 0], [10, 0])
    assert herding_order(f, 4).tolist() == [2, 1, 3, 0]
    assert herding_order(f, 2).tolist() == [2, 1]  # prefix: the order does not depend on the budget
    # square with its centre: centre first, then corners chasing the mean (ties → lowest index)
    sq = _pts([0, 0], [2, 0], [0, 2], [2, 2], [1, 1])
    # step 1 target (1,1): all corners tie → 0; step 2 target 3μ − (1,1) − (0,0) = (2,2) → 3
    assert herding_order(sq, 3).tolist() == [4, 0, 3]


def test_kcenter_order_by_hand():
    # μ = (1.5, 1): nearest is (1,0). Distances from it: (0,0) 1, (5,0) 4, (0,4) √17 → pick (0,4);
    # then nearest-centre distances (0,0) 1, (5,0) 4 → pick (5,0); then (0,0).
    f = _pts([0, 0], [1, 0], [5, 0], [0, 4])
    order, radius = kcenter_order(f, 4)
    assert order.tolist() == [1, 3, 2, 0] and radius == 0.0
    order, radius = kcenter_order(f, 2)
    assert order.tolist() == [1, 3] and radius == pytest.approx(4.0)
    # duplicates: a copy of a centre is never picked before the other points
    dup = _pts([0, 0], [0, 0], [3, 0])
    assert kcenter_order(dup, 3)[0].tolist()[:2] in ([0, 2], [1, 2])


def _feature_dataset(points_per_class):
    labels = torch.cat([torch.full((len(p),), c) for c, p in enumerate(points_per_class)])
    ds = ImageDataset(torch.zeros(len(labels), 1, 2, 2), labels, [str(c) for c in range(len(points_per_class))],
                      (0.0,), (1.0,))
    return ds, torch.cat(points_per_class).float()


def test_selectors_run_the_greedy_per_class_on_given_features():
    a = torch.tensor([[0, 0], [1, 0], [2, 0], [10, 0]], dtype=torch.float32)
    b = torch.tensor([[0, 0], [1, 0], [5, 0], [0, 4]], dtype=torch.float32)
    ds, feats = _feature_dataset([a, b])  # rows 0-3 class 0, rows 4-7 class 1
    h = HerdingSelector().select(ds, 0.5, RunContext(), prepared=feats)
    # class 1 herding: μ = (1.5, 1) → (1,0); target (2,2): (0,0) and (0,4) tie at √8 → the lower row
    assert h.indices.tolist() == [1, 2, 4, 5] and torch.equal(h.weights, torch.ones(4))
    k = KCenterSelector().select(ds, 0.5, RunContext(), prepared=feats)
    assert k.indices.tolist() == [2, 3, 5, 7]  # class 0: 2 (nearest μ) then 10 (farthest); class 1 as above
    assert k.info["kcenter_radius"] > 0
    with pytest.raises(SmallsetError):
        HerdingSelector().select(ds, 0.5, RunContext(), prepared=feats[:3])
    with pytest.raises(SmallsetError):
        KCenterSelector().select(ds, 0.5, RunContext(), prepared=torch.zeros(len(ds)))


def test_herding_matches_the_mean_and_kcenter_covers_better_than_random():
    gen = torch.Generator().manual_seed(0)
    pts = [torch.randn(60, 3, generator=gen) * torch.tensor([3.0, 1.0, 0.5]) for _ in range(2)]
    ds, feats = _feature_dataset(pts)
    budgets = class_budgets(ds.class_counts(), 0.1)
    herd = HerdingSelector().select(ds, 0.1, RunContext(), prepared=feats)
    kc = KCenterSelector().select(ds, 0.1, RunContext(), prepared=feats)
    assert torch.bincount(ds.labels[herd.indices]).tolist() == budgets
    for c, p in enumerate(pts):
        mu = p.mean(0)
        herd_err = float((feats[herd.indices][ds.labels[herd.indices] == c].mean(0) - mu).norm())
        kc_sel = feats[kc.indices][ds.labels[kc.indices] == c]
        kc_radius = float(torch.cdist(p, kc_sel).min(1).values.max())
        rand_err, rand_radius = [], []
        for _ in range(30):
            r = p[torch.randperm(60, generator=gen)[: budgets[c]]]
            rand_err.append(float((r.mean(0) - mu).norm()))
            rand_radius.append(float(torch.cdist(p, r).min(1).values.max()))
        assert herd_err < min(rand_err)
        assert kc_radius < sum(rand_radius) / len(rand_radius)
    # nested: a smaller fraction keeps a prefix of the same greedy order
    small = set(HerdingSelector().select(ds, 0.05, RunContext(), prepared=feats).indices.tolist())
    assert small <= set(herd.indices.tolist())


def test_features_from_the_model(tiny_dataset):
    ds = tiny_dataset(n_per_class=8, num_classes=3)
    f1 = HerdingSelector().prepare(ds, RunContext(seed=0, **CTX)).value
    assert f1.shape == (len(ds), 8) and f1.dtype == torch.float32
    same = KCenterSelector(FeatureConfig(feature_epochs=0)).prepare(ds, RunContext(seed=0, **CTX)).value
    assert torch.equal(f1, same)  # same seeded model
    assert KCenterSelector().config.feature_epochs == 5 and HerdingSelector().config.feature_epochs == 0
    assert not torch.equal(f1, HerdingSelector().prepare(ds, RunContext(seed=1, **CTX)).value)
    trained = HerdingSelector(FeatureConfig(feature_epochs=2)).prepare(ds, RunContext(seed=0, **CTX)).value
    assert trained.shape == f1.shape and not torch.equal(trained, f1)
    untrained = KCenterSelector(FeatureConfig(feature_epochs=0))
    sel = untrained.select(ds, 0.25, RunContext(seed=0, **CTX))  # computes features itself
    again = untrained.select(ds, 0.25, RunContext(seed=0, **CTX), prepared=f1)
    assert torch.equal(sel.indices, again.indices)
    assert torch.bincount(ds.labels[sel.indices], minlength=3).tolist() == class_budgets(ds.class_counts(), 0.25)
    with pytest.raises(SmallsetError):
        HerdingSelector(FeatureConfig(feature_epochs=-1)).prepare(ds, RunContext(**CTX))
