"""GEDA (prune/geda.py): the ECDF-matching problem, its three solvers, the fill, the gradient norms."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from smallset import prune  # noqa: F401
from smallset.context import RunContext
from smallset.data import ImageDataset
from smallset.errors import SmallsetError
from smallset.prune.base import SELECTORS, class_budgets
from smallset.prune.geda import (
    GEDAConfig,
    GEDASelector,
    _build_problem,
    cell_sizes,
    closed_form_counts,
    ecdf_l1,
    ecdf_nodes,
    full_grad_norms,
    last_layer_grad_norms,
    node_counts,
    solve_counts_milp,
    solve_full_milp,
    trapezoid_objective,
    trapezoid_weights,
)


def _scored_dataset(scores_per_class: list[torch.Tensor]) -> tuple[ImageDataset, torch.Tensor]:
    """A dataset whose examples carry the given per-class scores, classes interleaved."""
    labels = torch.cat([torch.full((len(s),), c) for c, s in enumerate(scores_per_class)])
    scores = torch.cat(scores_per_class).float()
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    labels, scores = labels[perm], scores[perm]
    ds = ImageDataset(torch.zeros(len(labels), 1, 2, 2), labels, [str(c) for c in range(len(scores_per_class))],
                      (0.0,), (1.0,))
    return ds, scores


def _objective_of_ranks(p, ranks: torch.Tensor) -> float:
    below = torch.tensor([int((ranks < int(nk)).sum()) for nk in p.nk])
    return trapezoid_objective(below, p.m, p.fk, p.w)


def test_registered_and_pinned_attributes():
    assert SELECTORS.get("geda") is GEDASelector
    assert GEDASelector.higher_is_keep is None  # matches the score distribution, keeps neither end
    assert GEDASelector.uses_model is True
    assert set(GEDASelector().prepare_params()) == {"warmup_epochs", "gradient", "lr", "batch_size"}


def test_nodes_weights_and_closed_form_by_hand():
    g = torch.arange(1, 11).double()  # 1..10
    t = ecdf_nodes(g, 4, "uniform")
    assert t.tolist() == [1.0, 4.0, 7.0, 10.0]
    assert trapezoid_weights(torch.tensor([0.0, 1.0, 3.0])).tolist() == [0.5, 1.5, 1.0]
    nk = node_counts(g, t)
    assert nk.tolist() == [1, 4, 7, 10]
    assert cell_sizes(nk, 10).tolist() == [1, 3, 3, 3, 0]
    # m = 3: A_k = floor(3·n_k/10 + 1/2) = 0, 1, 2, 3 → one pick in each of the three inner cells
    assert closed_form_counts(nk, 10, 3).tolist() == [0, 1, 1, 1, 0]
    assert ecdf_nodes(torch.tensor([0.0, 0.0, 1.0, 5.0, 9.0]), 3, "quantile").tolist() == [0.0, 1.0, 9.0]
    with pytest.raises(SmallsetError):
        ecdf_nodes(g, 1)


def test_three_solvers_and_brute_force_reach_the_same_optimum():
    gen = torch.Generator().manual_seed(1)
    problems = []
    for i in range(12):
        n = int(torch.randint(4, 11, (1,), generator=gen))
        m = int(torch.randint(1, n + 1, (1,), generator=gen))
        g = torch.randint(0, 6, (n,), generator=gen).double() if i % 3 == 0 else torch.rand(n, generator=gen) ** 3
        problems.append(_build_problem(g, m, nodes=int(3 + i % 4), placement="quantile" if i % 2 else "uniform"))
    reduced = solve_counts_milp(problems)  # one CBC call for all instances
    full = solve_full_milp(problems)
    for p, y, ranks in zip(problems, reduced, full):
        closed = closed_form_counts(p.nk, p.n, p.m)
        obj_closed = trapezoid_objective(torch.cumsum(closed, 0)[:-1], p.m, p.fk, p.w)
        obj_reduced = trapezoid_objective(torch.cumsum(y, 0)[:-1], p.m, p.fk, p.w)
        obj_full = _objective_of_ranks(p, ranks)
        brute = min(_objective_of_ranks(p, torch.tensor(c)) for c in itertools.combinations(range(p.n), p.m))
        assert int(y.sum()) == p.m and len(ranks) == p.m
        assert bool((y <= cell_sizes(p.nk, p.n)).all())
        assert obj_closed == pytest.approx(brute, abs=1e-9)
        assert obj_reduced == pytest.approx(brute, abs=1e-7)
        assert obj_full == pytest.approx(brute, abs=1e-7)


def test_selector_solvers_agree_on_the_objective():
    gen = torch.Generator().manual_seed(2)
    ds, scores = _scored_dataset([torch.rand(40, generator=gen) ** 2, torch.rand(30, generator=gen) * 3])
    objs = {}
    for milp in ("reduced", "full", "closed_form"):
        out = GEDASelector(GEDAConfig(milp=milp)).select(ds, 0.2, RunContext(seed=0), prepared=scores)
        assert len(out.indices) == sum(class_budgets(ds.class_counts(), 0.2))
        objs[milp] = out.info["ecdf_objective"]
    assert objs["reduced"] == pytest.approx(objs["closed_form"], abs=1e-9)
    assert objs["full"] == pytest.approx(objs["closed_form"], abs=1e-9)
    with pytest.raises(SmallsetError):
        GEDASelector(GEDAConfig(milp="full", full_milp_max=50)).select(ds, 0.2, RunContext(), prepared=scores)


def test_subset_ecdf_is_closer_than_random_subsets():
    gen = torch.Generator().manual_seed(3)
    g = torch.distributions.Gamma(1.5, 1.0).sample((300,))  # skewed, like gradient norms
    ds, scores = _scored_dataset([g])
    m = class_budgets([300], 0.1)[0]
    for fill in ("systematic", "random"):
        out = GEDASelector(GEDAConfig(fill=fill)).select(ds, 0.1, RunContext(seed=0), prepared=scores)
        p = _build_problem(scores, m, 5, "uniform")
        rank_of = torch.empty(300, dtype=torch.long)
        rank_of[p.order] = torch.arange(300)
        obj = _objective_of_ranks(p, rank_of[out.indices])
        random_objs = [_objective_of_ranks(p, torch.randperm(300, generator=gen)[:m]) for _ in range(50)]
        assert obj <= min(random_objs) + 1e-12  # optimal for the trapezoid objective
        assert obj == pytest.approx(out.info["ecdf_objective"])
    # systematic fill also matches the exact ECDF (∫|F_S − F|) better than random subsets do on average
    sys_out = GEDASelector(GEDAConfig(fill="systematic")).select(ds, 0.1, RunContext(seed=0), prepared=scores)
    exact = ecdf_l1(scores, scores[sys_out.indices])
    assert exact == pytest.approx(sys_out.info["ecdf_l1"], rel=1e-6)
    rand = [ecdf_l1(scores, scores[torch.randperm(300, generator=gen)[:m]]) for _ in range(50)]
    assert exact < sum(rand) / len(rand)


def test_ecdf_l1_by_hand():
    # F_full steps at 0 and 2 (½ each); the subset {2} has F = 0 on [0, 2): area ½ · 2 = 1
    assert ecdf_l1(torch.tensor([0.0, 2.0]), torch.tensor([2.0])) == pytest.approx(1.0)
    assert ecdf_l1(torch.tensor([1.0, 3.0, 5.0]), torch.tensor([1.0, 3.0, 5.0])) == 0.0


def test_fill_weights_budgets_and_reproducibility():
    gen = torch.Generator().manual_seed(4)
    ds, scores = _scored_dataset([torch.rand(50, generator=gen), torch.rand(50, generator=gen) ** 4,
                                  torch.rand(20, generator=gen)])
    budgets = class_budgets(ds.class_counts(), 0.3)
    sysa = GEDASelector().select(ds, 0.3, RunContext(seed=0), prepared=scores)
    sysb = GEDASelector().select(ds, 0.3, RunContext(seed=5), prepared=scores)
    assert torch.equal(sysa.indices, sysb.indices)  # systematic fill is deterministic
    assert torch.equal(sysa.weights, torch.ones(len(sysa.indices)))
    assert torch.bincount(ds.labels[sysa.indices], minlength=3).tolist() == budgets
    r = [GEDASelector(GEDAConfig(fill="random")).select(ds, 0.3, RunContext(seed=s), prepared=scores).indices
         for s in (0, 0, 1)]
    assert torch.equal(r[0], r[1]) and not torch.equal(r[0], r[2])
    # systematic picks evenly spaced ranks: a class with 50 examples in one cell takes every ~3rd rank
    flat = torch.arange(60).float()
    ds1, s1 = _scored_dataset([flat])
    out = GEDASelector(GEDAConfig(nodes=2)).select(ds1, 0.1, RunContext(), prepared=s1)
    # nodes at min and max: cell 0 = {0}, cell 1 = (0, 59] with 59 points, 6 picks; A_1 = round(6/60) = 0
    assert sorted(s1[out.indices].int().tolist()) == [1 + (2 * i + 1) * 59 // 12 for i in range(6)]
    # cell weights: the weighted subset's ECDF equals the class ECDF at every node. Values 0..4 with
    # 10, 5, 20, 5, 10 copies, m = 15: y = 3, 2, 6, 1, 3 per cell, weights 1, 0.75, 1, 1.5, 1.
    vals = torch.repeat_interleave(torch.arange(5.0), torch.tensor([10, 5, 20, 5, 10]))
    ds2, s2 = _scored_dataset([vals])
    w = GEDASelector(GEDAConfig(weighting="cell", milp="closed_form")).select(ds2, 0.3, RunContext(), prepared=s2)
    picked = s2[w.indices]
    assert torch.bincount(picked.long(), minlength=5).tolist() == [3, 2, 6, 1, 3]
    assert sorted(set(w.weights.tolist())) == [0.75, 1.0, 1.5]
    for tk in range(5):
        weighted = float((w.weights * (picked <= tk)).sum() / w.weights.sum())
        assert weighted == pytest.approx(float((vals <= tk).double().mean()))


def test_gradient_norms_match_autograd(tiny_dataset):
    from smallset.models import create_model

    ds = tiny_dataset(n_per_class=4, num_classes=3)
    torch.manual_seed(0)
    model = create_model("mlp", 1, 3, (8, 8), width=8)
    x, y = ds.normalized(), ds.labels
    last = last_layer_grad_norms(model, x, y, batch_size=5)
    full = full_grad_norms(model, x, y, chunk=5)
    for i in range(len(y)):
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        head = [model.classifier.weight.grad, model.classifier.bias.grad]
        assert float(last[i]) == pytest.approx(float(torch.sqrt(sum((g ** 2).sum() for g in head))), rel=1e-5)
        every = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters()))
        assert float(full[i]) == pytest.approx(float(every), rel=1e-5)


def test_score_is_reproducible_and_select_without_scores(tiny_dataset):
    ds = tiny_dataset(n_per_class=10, num_classes=3)
    ctx = dict(model="mlp", model_kwargs={"width": 8})
    a = GEDASelector().prepare(ds, RunContext(seed=1, **ctx)).value
    assert torch.equal(a, GEDASelector().prepare(ds, RunContext(seed=1, **ctx)).value)
    assert not torch.equal(a, GEDASelector().prepare(ds, RunContext(seed=2, **ctx)).value)
    assert a.shape == (len(ds),) and bool((a > 0).all())
    warm = GEDASelector(GEDAConfig(warmup_epochs=1, batch_size=8)).prepare(ds, RunContext(seed=1, **ctx)).value
    assert not torch.equal(a, warm)
    s = GEDASelector().select(ds, 0.3, RunContext(seed=1, **ctx))
    assert torch.equal(s.indices, GEDASelector().select(ds, 0.3, RunContext(seed=1, **ctx), prepared=a).indices)
    with pytest.raises(SmallsetError):
        GEDASelector().select(ds, 0.3, RunContext(), prepared=torch.ones(3))
    with pytest.raises(SmallsetError):
        GEDASelector(GEDAConfig(nodes=1)).select(ds, 0.3, RunContext(), prepared=a)
