"""CREST (prune/crest.py) and greedy facility location (prune/submodular.py); docs/methods/crest.md."""
import math

import pytest
import torch
import torch.nn.functional as F

from smallset.context import RunContext
from smallset.errors import SmallsetError
from smallset.models import model_names
from smallset.prune.base import SELECTORS
from smallset.prune.crest import CrestConfig, CrestSelector, _Crest, budget_steps, lr_for_epoch
from smallset.prune.submodular import euclidean_similarity, facility_location_greedy, facility_location_value

# A hand-made similarity matrix: two clusters {0, 1, 2} and {3, 4}.
SIM = torch.tensor([
    [1.0, 0.9, 0.7, 0.1, 0.0],
    [0.9, 1.0, 0.9, 0.1, 0.1],
    [0.7, 0.9, 1.0, 0.2, 0.1],
    [0.1, 0.1, 0.2, 1.0, 0.9],
    [0.0, 0.1, 0.1, 0.9, 1.0],
])


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def small_cfg(**kw):
    base = dict(epochs=4, batch_size=12, warmup_epochs=0, lr_milestones="", random_subset_size=0.3,
                num_minibatch_coreset=2, drop_learned=False)
    base.update(kw)
    return CrestConfig(**base)


def ctx_for(model="mlp", seed=0, test=None, **kw):
    return RunContext(seed=seed, model=model, model_kwargs=kw or {"width": 16}, test=test)


# --- facility location --------------------------------------------------------------------------
def test_facility_location_hand_computed_greedy_and_weights():
    # Step 1 gains are the column sums 2.7, 3.0, 2.9, 2.3, 2.1 → 1.
    # Step 2 gains given cur = [.9, 1, .9, .1, .1]: 0.1, –, 0.2, 1.7, 1.7 → 3 (exact tie with 4 → lower index).
    sel, w = facility_location_greedy(SIM, 2)
    assert sel.tolist() == [1, 3]
    assert w.tolist() == [3.0, 2.0]  # points 0, 1, 2 are closest to 1; points 3, 4 to 3
    # Step 3: all remaining gains are 0.1 → 0; point 0 then matches itself.
    sel, w = facility_location_greedy(SIM, 3)
    assert sel.tolist() == [1, 3, 0]
    assert w.tolist() == [2.0, 2.0, 1.0]
    assert facility_location_value(SIM, sel) == pytest.approx(1 + 1 + 0.9 + 1 + 0.9)


def test_facility_location_batched_padding_matches_single():
    other = torch.eye(3) * 0.5 + 0.5
    batch = torch.zeros(2, 5, 5)
    batch[0] = SIM
    batch[1, :3, :3] = other
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    sel, w = facility_location_greedy(batch, torch.tensor([2, 4]), valid)
    # The second set has 3 real points: its budget of 4 is capped at 3; padding is never picked or counted.
    assert sel.shape == w.shape == (2, 3)
    assert sel[0].tolist() == [1, 3, -1] and w[0].tolist() == [3.0, 2.0, 0.0]
    assert sorted(sel[1].tolist()) == [0, 1, 2] and w[1].tolist() == [1.0, 1.0, 1.0]


def test_euclidean_similarity_is_submodlib_kernel():
    f = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    s = euclidean_similarity(f)  # scale = dimension = 2, distance not squared
    assert s[0, 0].item() == pytest.approx(1.0)
    assert s[0, 1].item() == pytest.approx(math.exp(-5.0 / 2.0), rel=1e-5)


# --- budget, schedule, configuration ------------------------------------------------------------
def test_lr_schedule_follows_reference_warmup_and_milestones():
    cfg = CrestConfig()
    assert lr_for_epoch(cfg, 0) == 0.0
    assert lr_for_epoch(cfg, 10) == pytest.approx(0.05)
    assert lr_for_epoch(cfg, 20) == pytest.approx(0.1)
    assert lr_for_epoch(cfg, 120) == pytest.approx(0.1)
    assert lr_for_epoch(cfg, 121) == pytest.approx(0.01)
    assert lr_for_epoch(cfg, 171) == pytest.approx(0.001)


def test_budget_in_steps_is_respected_exactly(tiny_dataset, monkeypatch):
    ds = tiny_dataset(n_per_class=10, num_classes=3)  # N = 30
    steps = {"n": 0}
    orig = torch.optim.SGD.step

    def counting_step(self, *a, **k):
        steps["n"] += 1
        return orig(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", counting_step)
    for fraction, batch, epochs in [(0.5, 4, 3), (0.2, 5, 4), (1.0, 7, 2)]:
        steps["n"] = 0
        cfg = small_cfg(batch_size=batch, epochs=epochs)
        sel = CrestSelector(cfg).select(ds, fraction, ctx_for())
        expected = epochs * math.ceil(math.floor(30 * fraction) / batch)
        assert budget_steps(30, fraction, cfg) == (expected // epochs, expected)
        assert steps["n"] == expected  # every step trains (no warm-up) and nothing more
        assert sel.info["steps"] == expected
        assert len(sel.info["epoch_loss"]) == epochs


def test_bad_input_raises(tiny_dataset):
    ds = tiny_dataset(n_per_class=5)
    with pytest.raises(SmallsetError):
        CrestSelector(small_cfg()).select(ds, 0.0, ctx_for())
    with pytest.raises(SmallsetError):
        CrestSelector(small_cfg()).select(ds, 0.01, ctx_for())  # less than one example
    with pytest.raises(SmallsetError):
        CrestSelector(small_cfg(lr_milestones="ten")).select(ds, 0.5, ctx_for())
    with pytest.raises(SmallsetError):
        CrestSelector(small_cfg(random_subset_size=0.0)).select(ds, 0.5, ctx_for())
    assert CrestSelector.higher_is_keep is None
    assert CrestSelector().prepare(ds, ctx_for()) is None
    assert SELECTORS.get("crest") is CrestSelector


# --- selection ------------------------------------------------------------------------------------
def test_coresets_are_class_balanced_and_weights_count_selections(tiny_dataset):
    ds = tiny_dataset(n_per_class=20, num_classes=3)
    # Never re-select; epoch 0 runs at LR 0 (warm-up), so only coreset picks count as selections.
    cfg = small_cfg(batch_size=9, num_minibatch_coreset=2, check_thresh_factor=1e9, warmup_epochs=1)
    run = _Crest(cfg, ds, 0.5, ctx_for())
    run.select(epoch=1)
    k_c = math.ceil(9 / 3)
    assert len(run.U) == 2 * 3 * k_c  # P coresets × C classes × ceil(B/C)
    assert torch.bincount(ds.labels[run.U.cpu()], minlength=3).tolist() == [2 * k_c] * 3
    assert run.Uw.mean().item() == pytest.approx(1.0)  # weights normalised to mean 1 over the union
    # Every coreset point comes from the random subsets drawn for this selection.
    assert set(run.U.tolist()) <= set(run.R_uniq.tolist())
    sel = CrestSelector(cfg).select(ds, 0.5, ctx_for())
    assert sel.info["selections"] == 1 and sel.info["reselections"] == 0
    assert sel.weights.sum().item() == 2 * 3 * k_c  # weight = number of times selected
    assert torch.all(sel.weights >= 1)


def test_quadratic_check_fires_only_when_loss_moves_away_from_the_model(tiny_dataset):
    ds = tiny_dataset(n_per_class=20, num_classes=3)
    run = _Crest(small_cfg(), ds, 0.5, ctx_for())
    run.select(epoch=1)
    assert run.g0.shape == run.delta.shape == run.h0.shape
    assert torch.all(run.h0 > 0)  # Adahessian moment sqrt(s) + 1e-4 is positive
    # Pin L0 to the true random-subset loss so that only movement matters.
    with torch.no_grad():
        logits = run.model(run.x[run.R_uniq])
        l_true = float((F.cross_entropy(logits, run.y[run.R_uniq], reduction="none") * run.R_counts).sum()
                       / run.R_counts.sum())
    run.L0 = l_true
    assert run.check() is False  # no movement: the quadratic model is exact
    # A small move along −g0 tracked by δ: the quadratic model predicts it to within τ.
    params = run.params
    step = 1e-3 * run.g0 / run.g0.norm()
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(torch.nn.utils.parameters_to_vector(params) - step, params)
    run.delta = -step
    assert run.check() is False
    # A big move that δ does not know about: the loss moves away from the model → re-select.
    with torch.no_grad():
        run.model.classifier.weight.mul_(25.0)
        run.model.classifier.bias.add_(torch.tensor([5.0, -5.0, 0.0]))
    assert run.check() is True


def test_check_subsets_restricts_the_checks_loss_to_the_first_random_subsets(tiny_dataset, monkeypatch):
    ds = tiny_dataset(n_per_class=20, num_classes=3)
    drawn = {}
    real = _Crest._random_subsets

    def spy(self, P):
        drawn["members"] = real(self, P)
        return drawn["members"]

    monkeypatch.setattr(_Crest, "_random_subsets", spy)
    full = _Crest(small_cfg(num_minibatch_coreset=3), ds, 0.5, ctx_for())
    full.select(epoch=1)
    m = drawn["members"]
    assert sorted(full.R_uniq.tolist()) == sorted(set(m[m >= 0].tolist()))  # reference: all P subsets
    assert full.R_counts.sum().item() == (m >= 0).sum().item()  # duplicates across subsets counted
    one = _Crest(small_cfg(num_minibatch_coreset=3, check_subsets=1), ds, 0.5, ctx_for())
    one.select(epoch=1)
    first = drawn["members"][:3]  # subset 0: one row per class
    assert sorted(one.R_uniq.tolist()) == sorted(first[first >= 0].tolist())
    assert one.R_counts.sum().item() == (first >= 0).sum().item() == 3 * math.ceil(0.3 * 60 / 3)
    assert len(one.U) == 3 * 3 * 4  # coresets still come from all P subsets
    with pytest.raises(SmallsetError, match="check_subsets"):
        CrestSelector(small_cfg(check_subsets=-1)).select(ds, 0.5, ctx_for())


def test_consistent_check_makes_the_quadratic_model_exact_at_selection(tiny_dataset):
    ds = tiny_dataset(n_per_class=20, num_classes=3)
    for check_subsets in (0, 1):
        run = _Crest(small_cfg(consistent_check=True, check_subsets=check_subsets), ds, 0.5, ctx_for())
        run.select(epoch=1)
        with torch.no_grad():
            ce = F.cross_entropy(run.model.eval()(run.x[run.R_uniq]), run.y[run.R_uniq], reduction="none")
        run.model.train()
        assert run.L0 == pytest.approx(float((ce * run.R_counts).sum() / run.R_counts.sum()), rel=1e-5)
        assert run.check() is False and run.check_errors[-1] < 1e-5  # δ = 0: L_true = L0 exactly
    # The reference's L0 is the weighted train-mode coreset loss: not the random subsets' loss in general.
    ref = _Crest(small_cfg(), ds, 0.5, ctx_for())
    ref.select(epoch=1)
    ref.check()
    assert ref.check_errors[-1] > 1e-4


def test_threshold_controls_reselection_end_to_end(tiny_dataset):
    ds = tiny_dataset(n_per_class=20, num_classes=3)
    never = CrestSelector(small_cfg(epochs=5, check_thresh_factor=1e9)).select(ds, 0.5, ctx_for())
    always = CrestSelector(small_cfg(epochs=5, check_thresh_factor=0.0)).select(ds, 0.5, ctx_for())
    assert never.info["reselections"] == 0 and never.info["selections"] == 1
    assert always.info["reselections"] >= 1
    assert always.info["selections"] == always.info["reselections"] + 1


def test_drop_learned_on_hand_made_record(tiny_dataset):
    ds = tiny_dataset(n_per_class=10, num_classes=2)  # labels alternate 0, 1, 0, 1, …
    cfg = small_cfg(random_subset_size=0.2, watch_interval=2, drop_thresh=0.1, min_pool_fraction=0.4)
    run = _Crest(cfg, ds, 0.5, ctx_for())
    assert run.k_r == 2  # ceil(0.2 · 20 / 2)
    rec = torch.full((2, 20), -1.0)
    rec[0, [0, 2, 4]] = 0.05  # class 0: learned (seen, every recorded loss ≤ 0.1)
    rec[1, 4] = 0.5  # …but 4 had a high loss in the other slot: kept
    rec[0, 6] = 0.1  # exactly the threshold: learned
    rec[:, [1, 3, 5, 7, 9, 11, 13]] = 0.01  # class 1: 7 of 10 learned → only 3 left
    run.record = rec
    run._drop_learned()
    assert run.pools[0].tolist() == [4, 8, 10, 12, 14, 16, 18]
    assert run.pools[1].tolist() == [15, 17, 19]  # 3 > k_r = 2: the class pool shrinks
    assert run.dropped == 3 + 7
    # A class whose kept set would be ≤ k_r keeps its pool; a pool ≤ min_pool_fraction·N is refused.
    run2 = _Crest(small_cfg(random_subset_size=0.2, watch_interval=2), ds, 0.5, ctx_for())
    rec2 = torch.full((2, 20), -1.0)
    rec2[0, [1, 3, 5, 7, 9, 11, 13, 15, 17]] = 0.0  # only 19 left in class 1
    rec2[0, [0, 2]] = 0.0
    run2.record = rec2
    run2._drop_learned()
    assert len(run2.pools[1]) == 10 and len(run2.pools[0]) == 8
    run3 = _Crest(small_cfg(random_subset_size=0.2, watch_interval=2, min_pool_fraction=0.95), ds, 0.5, ctx_for())
    run3.record = rec2.clone()
    run3._drop_learned()
    assert sum(len(p) for p in run3.pools) == 20 and run3.dropped == 0


def test_learned_examples_leave_the_pool_during_training(tiny_dataset):
    ds = tiny_dataset(n_per_class=20, num_classes=3, noise=0.05)
    cfg = small_cfg(epochs=8, lr=0.3, random_subset_size=0.1, drop_learned=True, drop_interval=2,
                    watch_interval=2, min_pool_fraction=0.0, num_minibatch_coreset=3,
                    check_thresh_factor=0.0)  # re-select at every check, so drops are tried often
    run = _Crest(cfg, ds, 0.5, ctx_for())
    info = run.run()
    pool = info["pool_size"]
    assert pool[0] == 60 and pool[-1] < 60  # examples were dropped …
    assert all(a >= b for a, b in zip(pool, pool[1:]))  # … for good
    gone = sorted(set(range(60)) - set(torch.cat(run.pools).tolist()))
    assert len(gone) == info["dropped"] == 60 - pool[-1]
    rec = run.record[:, gone]
    assert torch.all(rec.max(0).values <= cfg.drop_thresh) and torch.all((rec >= 0).any(0))
    kept = CrestSelector(small_cfg(epochs=8, lr=0.3, random_subset_size=0.1, drop_learned=False)).select(
        ds, 0.5, ctx_for())
    assert kept.info["pool_size"][-1] == 60 and kept.info["dropped"] == 0


def test_training_reduces_loss_and_learns(tiny_dataset):
    ds = tiny_dataset(n_per_class=20, num_classes=3)
    test = tiny_dataset(n_per_class=10, num_classes=3, seed=0)
    sel = CrestSelector(small_cfg(epochs=8, lr=0.2)).select(ds, 0.5, ctx_for(test=test))
    loss = sel.info["epoch_loss"]
    assert loss[-1] < 0.5 * loss[0]
    assert sel.info["test_accuracy"] > 0.9
    assert sel.info["train_seconds"] >= sel.info["selection_seconds"] > 0
    assert len(sel.info["epoch_accuracy"]) == 8


def test_same_seed_same_selection(tiny_dataset):
    ds = tiny_dataset(n_per_class=20, num_classes=3)
    cfg = small_cfg(epochs=5, check_thresh_factor=0.05, drop_learned=True, drop_interval=2, min_pool_fraction=0.0)
    a = CrestSelector(cfg).select(ds, 0.5, ctx_for(seed=3))
    b = CrestSelector(cfg).select(ds, 0.5, ctx_for(seed=3))
    c = CrestSelector(cfg).select(ds, 0.5, ctx_for(seed=4))
    assert torch.equal(a.indices, b.indices) and torch.equal(a.weights, b.weights)
    assert a.info["epoch_loss"] == b.info["epoch_loss"] and a.info["check_error"] == b.info["check_error"]
    assert not (torch.equal(a.indices, c.indices) and torch.equal(a.weights, c.weights))


@pytest.mark.parametrize("model", model_names())
def test_runs_with_every_registered_model(tiny_dataset, model):
    size = 16 if model == "lenet" else 8  # LeNet needs at least 16×16
    ds = tiny_dataset(n_per_class=4, num_classes=3, size=size)
    kwargs = {"convnet": {"width": 4, "depth": 2}, "convnet-s": {"width": 4, "depth": 2},
              "mlp": {"width": 8}}.get(model, {})
    # Two steps: epoch 0 at LR 0 (warm-up), then one selection (proxies, facility location, Hutchinson
    # pass) and one SGD step.
    cfg = small_cfg(epochs=2, batch_size=6, warmup_epochs=1, random_subset_size=0.5, num_minibatch_coreset=1)
    sel = CrestSelector(cfg).select(ds, 0.5, RunContext(model=model, model_kwargs=kwargs, test=ds))
    assert sel.info["steps"] == 2 and sel.info["selections"] == 1
    assert sel.weights.sum().item() == 6  # one coreset of ceil(6/3) per class; epoch 0 at LR 0 adds none
    assert 0.0 <= sel.info["test_accuracy"] <= 1.0
