"""Example forgetting (prune/forgetting.py): the event counting, the scoring run and the selection."""
import pytest
import torch

from smallset import prune  # noqa: F401  (registers every selector)
from smallset.context import RunContext
from smallset.errors import SmallsetError
from smallset.prune.base import SELECTORS, class_budgets
from smallset.prune.forgetting import ForgettingConfig, ForgettingSelector, forgetting_counts

CTX = dict(model="mlp", model_kwargs={"width": 16})


def test_registered_and_keeps_the_most_forgotten():
    assert SELECTORS.get("forgetting") is ForgettingSelector
    assert ForgettingSelector.higher_is_keep is True  # keep the MOST forgotten examples
    assert ForgettingSelector.uses_model is True
    fields = set(ForgettingSelector().prepare_params())
    assert {"score_epochs", "never_learned", "score_runs"} <= fields
    assert "balance" not in fields  # only changes the selection step


def test_forgetting_counts_by_hand():
    # rows: presentations 1..5; columns: examples
    h = torch.tensor([
        [1, 1, 0, 0, 0, 1],
        [1, 0, 0, 1, 0, 0],
        [1, 1, 0, 1, 0, 0],
        [1, 0, 0, 0, 0, 0],
        [1, 0, 0, 1, 1, 0],
    ], dtype=torch.bool)
    # ex0 always right: 0; ex1 1→0 twice: 2; ex2 never learned; ex3 one 1→0; ex4 learned at the end: 0;
    # ex5 right only at the first presentation, then forgotten once: 1.
    assert forgetting_counts(h).tolist() == [0, 2, 5, 1, 0, 1]
    assert forgetting_counts(h, "deepcore").tolist() == [0, 2, 0, 1, 0, 1]
    # one presentation: no transition is possible; never-learned still gets T = 1 (Toneva)
    assert forgetting_counts(torch.tensor([[1, 0]], dtype=torch.bool)).tolist() == [0, 1]
    with pytest.raises(SmallsetError):
        forgetting_counts(h, "sometimes")
    with pytest.raises(SmallsetError):
        forgetting_counts(torch.ones(4, dtype=torch.bool))


def test_select_keeps_highest_counts_per_class(tiny_dataset):
    ds = tiny_dataset(n_per_class=10, num_classes=3)
    # distinct scores: class c, k-th member (dataset order) gets 100·c + (k * 7 % 10)
    scores = torch.zeros(len(ds))
    for c, idx in enumerate(ds.class_indices()):
        scores[idx] = 100.0 * c + (torch.arange(len(idx)) * 7 % 10).float()
    sel = ForgettingSelector()
    out = sel.select(ds, 0.3, RunContext(seed=0, **CTX), prepared=scores)
    budgets = class_budgets(ds.class_counts(), 0.3)
    for c, idx in enumerate(ds.class_indices()):
        kept = set(out.indices.tolist()) & set(idx.tolist())
        best = idx[torch.argsort(scores[idx], descending=True)[: budgets[c]]]
        assert kept == set(best.tolist())
    assert torch.equal(out.weights, torch.ones(len(out.indices)))
    assert torch.equal(out.scores, scores)


def test_global_selection_and_seeded_tie_breaking(tiny_dataset):
    ds = tiny_dataset(n_per_class=20, num_classes=2)
    scores = torch.zeros(len(ds))
    scores[ds.labels == 1] = 3.0  # class 1 is the most forgotten: a global top-50% takes all of it
    glob = ForgettingSelector(ForgettingConfig(balance=False)).select(ds, 0.5, RunContext(seed=0), prepared=scores)
    assert set(glob.indices.tolist()) == set(torch.nonzero(ds.labels == 1).flatten().tolist())
    # all-tied scores: the pick is a seeded random draw, identical for a seed, different across seeds
    tied = torch.ones(len(ds))
    picks = [ForgettingSelector().select(ds, 0.25, RunContext(seed=s), prepared=tied).indices for s in (0, 0, 1, 2)]
    assert torch.equal(picks[0], picks[1])
    assert not (torch.equal(picks[0], picks[2]) and torch.equal(picks[0], picks[3]))


def test_score_run_is_reproducible_and_counts_are_bounded(tiny_dataset):
    ds = tiny_dataset(n_per_class=16, num_classes=3, noise=0.6)
    cfg = ForgettingConfig(score_epochs=4, batch_size=16)
    sel = ForgettingSelector(cfg)
    state = sel.prepare(ds, RunContext(seed=3, **CTX))
    a = state.value
    b = ForgettingSelector(cfg).prepare(ds, RunContext(seed=3, **CTX)).value
    assert torch.equal(a, b)
    assert a.shape == (len(ds),) and a.dtype == torch.float32
    assert bool((a >= 0).all()) and bool((a <= 4).all()) and torch.equal(a, a.round())
    acc = state.info["score_train_accuracy"]
    assert len(acc) == 4 and acc[-1] > acc[0]  # the scoring model learns
    # never-learned rule: DeepCore gives 0 where Toneva gives T; elsewhere the two agree
    d = ForgettingSelector(ForgettingConfig(score_epochs=4, batch_size=16, never_learned="deepcore")).prepare(
        ds, RunContext(seed=3, **CTX)).value
    differ = a != d
    assert bool((a[differ] == 4).all()) and bool((d[differ] == 0).all())
    # select() without scores computes them itself and gives the same subset
    s1 = sel.select(ds, 0.5, RunContext(seed=3, **CTX))
    s2 = sel.select(ds, 0.5, RunContext(seed=3, **CTX), prepared=a)
    assert torch.equal(s1.indices, s2.indices)


def test_every_example_is_recorded_once_per_epoch(tiny_dataset):
    from smallset.prune._features import seeded_model, sgd_epochs

    ds = tiny_dataset(n_per_class=10, num_classes=3)
    ctx = RunContext(seed=0, **CTX)
    model = seeded_model(ds, ctx)
    x = ds.normalized()
    seen = torch.zeros(3, len(ds), dtype=torch.long)
    same = []

    def record(ep, idx, logits):
        seen[ep, idx] += 1
        with torch.no_grad():  # the recorded logits are the current (pre-update) weights' forward pass
            same.append(torch.allclose(logits, model(x[idx]), atol=1e-6))

    sgd_epochs(model, x, ds.labels, 3, ctx.generator(1), lr=0.1, batch_size=7, on_batch=record)
    assert bool((seen == 1).all())
    assert len(same) == 3 * 5 and all(same)


def test_bad_input_raises(tiny_dataset):
    ds = tiny_dataset(n_per_class=5, num_classes=2)
    with pytest.raises(SmallsetError):
        ForgettingSelector(ForgettingConfig(score_epochs=0)).prepare(ds, RunContext(**CTX))
    with pytest.raises(SmallsetError):
        ForgettingSelector().select(ds, 0.5, RunContext(), prepared=torch.zeros(3))
    with pytest.raises(SmallsetError):
        ForgettingSelector().select(ds, 1.5, RunContext(), prepared=torch.zeros(len(ds)))
