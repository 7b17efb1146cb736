"""CREST (prune/crest.py) and greedy facility location (prune/submodular.py); docs/methods/crest.md. The
quadratic model, δ, the check-interval rule and facility location also against computations written here."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

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


# --- against computations written here (Hessian, delta, interval rule, brute force) -------------------------
# CREST (docs/methods/crest.md#crest-quadratic-model, #crest-adaptive-interval, #crest-coreset-selection)
# against computations written here: the quadratic model from an explicit Hessian, δ as the parameter change
# since the selection, the check-interval / P rule on scripted κ, and greedy facility location against brute
# force (issue 10).

def cfg_for(**kw):
    base = dict(epochs=4, batch_size=5, warmup_epochs=0, lr_milestones="", random_subset_size=0.3,
                num_minibatch_coreset=2, drop_learned=False)
    base.update(kw)
    return CrestConfig(**base)


def ctx(seed=0):
    return RunContext(seed=seed, model="mlp", model_kwargs={"width": 4})


def flat_params(run):
    return torch.cat([p.detach().reshape(-1) for p in run.params]).clone()


# --- (a) the quadratic model --------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # inside torch.func
@pytest.mark.parametrize("approx_moment", [True, False])
def test_quadratic_model_against_an_explicit_hessian(tiny_dataset, approx_moment):
    """Two coreset batches (5 + 3 examples, weighted): per batch the weighted mean loss ℓ_b, its gradient ∇_b and
    its full Hessian H_b (float64, torch.func), the Hutchinson sample h_b = v_b ⊙ H_b v_b with the run's
    Rademacher draws; Adahessian EMAs from zero: m ← 0.9m + 0.1∇, s ← 0.999s + 0.001h², ĝ = m/(1 − 0.9^k),
    D = sqrt(s/(1 − 0.999^k)) + 1e-4. Then g₀ = batch-size-weighted mean of ĝ_b, H₀ of D_b (the raw h_b when
    approx_moment is off), L₀ of ℓ_b, κ = mean ‖D_b‖; and the check's L_approx = L₀ + δ·g₀ + ½ δ·(H₀ ⊙ δ)."""
    ds = tiny_dataset(n_per_class=10, num_classes=3, size=4)  # MLP on 16 inputs: 103 parameters
    run = _Crest(cfg_for(approx_moment=approx_moment), ds, 0.5, ctx())
    U = torch.tensor([0, 4, 7, 11, 15, 20, 22, 29])
    Uw = torch.tensor([0.5, 1.5, 1.0, 2.0, 0.25, 1.25, 0.75, 0.75])
    run.U, run.Uw = U, Uw
    hstate = run.hgen.get_state()
    theta = flat_params(run)
    kappa = run._quadratic_model()

    names = [n for n, _ in run.model.named_parameters()]
    shapes = [p.shape for p in run.params]
    sizes = [p.numel() for p in run.params]
    model64 = run.model.double()

    def loss_of(flat, idx, w):
        parts = torch.split(flat, sizes)
        params = {n: t.view(s) for n, t, s in zip(names, parts, shapes)}
        out = functional_call(model64, params, (run.x[idx].double(),))
        return (F.cross_entropy(out, run.y[idx], reduction="none") * w.double()).mean()

    th = theta.double()
    hgen = torch.Generator().manual_seed(0)
    hgen.set_state(hstate)
    m = torch.zeros_like(th)
    s = torch.zeros_like(th)
    g0 = torch.zeros_like(th)
    h0 = torch.zeros_like(th)
    l0, kap, total = 0.0, 0.0, 0
    for k, (a, b) in enumerate([(0, 5), (5, 8)], start=1):
        idx, w = U[a:b], Uw[a:b]
        f = lambda t: loss_of(t, idx, w)  # noqa: E731, B023 (used within this iteration only)
        loss = f(th)
        grad = torch.func.grad(f)(th)
        hess = torch.func.hessian(f)(th)
        v = torch.randint(0, 2, (len(th),), generator=hgen).double() * 2 - 1
        h = v * (hess @ v)
        m = 0.9 * m + 0.1 * grad
        s = 0.999 * s + 0.001 * h * h
        ghat = m / (1 - 0.9 ** k)
        D = torch.sqrt(s / (1 - 0.999 ** k)) + 1e-4
        n_b = b - a
        g0 += n_b * ghat
        h0 += n_b * (D if approx_moment else h)
        l0 += n_b * float(loss)
        kap += float(D.norm())
        total += n_b
    g0, h0, l0, kap = g0 / total, h0 / total, l0 / total, kap / 2

    assert float(g0.abs().max()) > 1e-3 and float(h0.abs().max()) > 1e-3
    assert torch.allclose(run.g0.double(), g0, rtol=1e-4, atol=1e-6), "g₀ differs from the bias-corrected EMA of ∇"
    assert torch.allclose(run.h0.double(), h0, rtol=1e-4, atol=1e-6), (
        "H₀ differs from the Hutchinson/Adahessian diagonal")
    assert run.L0 == pytest.approx(l0, rel=1e-5)
    assert kappa == pytest.approx(kap, rel=1e-5)
    assert torch.equal(run.delta, torch.zeros_like(run.delta))

    # The check's quadratic prediction at a displacement δ, against L_true on R (eval mode, unweighted).
    R = torch.tensor([1, 2, 3, 5, 8, 13, 21])
    run.R_uniq, run.R_counts = R, torch.tensor([1.0, 2.0, 1.0, 1.0, 3.0, 1.0, 1.0])
    run.model.float()
    delta = torch.randn(len(theta), generator=torch.Generator().manual_seed(1)) * 0.3
    run.delta = delta
    run.check()
    with torch.no_grad():
        ce = F.cross_entropy(run.model.eval()(run.x[R]), run.y[R], reduction="none").double()
    run.model.train()
    l_true = float((ce * run.R_counts.double()).sum() / run.R_counts.sum())
    d = delta.double()
    lin, quad = float(d @ g0), float(0.5 * (d * h0 * d).sum())
    assert abs(lin) > 1e-3 and abs(quad) > 1e-3  # both terms matter at this δ
    want = abs(l_true - (l0 + lin + quad)) / l_true
    assert run.check_errors[-1] == pytest.approx(want, rel=1e-4, abs=1e-6), (
        "L_approx is not L₀ + δ·g₀ + ½ δ·(H₀ ⊙ δ)")


# --- (b) δ is the parameter change since the selection -----------------------------------------------
@pytest.mark.parametrize("thresh", [1e9, 0.0])
def test_delta_is_the_parameter_change_since_the_last_selection(tiny_dataset, monkeypatch, thresh):
    """With no weight decay and no momentum, SGD moves θ by −lr·∇ per step exactly as δ is updated, so at the end
    of the run δ equals θ − θ(last selection), across LR changes (warm-up) and epochs; with τ = 0 every check
    re-selects and δ restarts each time."""
    ds = tiny_dataset(n_per_class=20, num_classes=3)
    snaps = []
    real = _Crest._quadratic_model

    def spy(self):
        snaps.append(flat_params(self))
        return real(self)

    monkeypatch.setattr(_Crest, "_quadratic_model", spy)
    cfg = cfg_for(epochs=5, batch_size=6, lr=0.2, weight_decay=0.0, momentum=0.0, warmup_epochs=2,
                  check_thresh_factor=thresh)
    run = _Crest(cfg, ds, 0.5, ctx())
    info = run.run()
    assert info["selections"] == len(snaps) and (len(snaps) == 1) == (thresh > 1)
    moved = flat_params(run) - snaps[-1]
    assert float(moved.abs().max()) > 1e-3
    assert torch.allclose(run.delta, moved, rtol=1e-4, atol=1e-6), (
        f"δ differs from the parameter change since the selection by {float((run.delta - moved).abs().max()):.3g}")


# --- (c) check interval and P on scripted κ ----------------------------------------------------------
def test_check_interval_and_number_of_coresets_follow_scripted_kappa(tiny_dataset, monkeypatch):
    """N = 60, fraction ½, B = 4 → 8 steps per epoch, 40 in all; interval_mul 1.5, batch_num_mul 2.5. κ per
    selection 4 (κ₀), 2.5, 1, 8, 0.5 → interval ceil(κ₀/κ·1.5) = ceil(2.4) = 3, 6, ceil(0.75) = 1, 12 and
    P = int(min(interval·2.5, 8)) = 7, 8, 2, 8; the first selection keeps check_interval 1 and
    P = num_minibatch_coreset 5. Checks (answers scripted) fall every `interval` steps after the last
    selection and a failed check re-selects at that step."""
    ds = tiny_dataset(n_per_class=20, num_classes=3)
    kappas = iter([4.0, 2.5, 1.0, 8.0, 0.5])
    answers = iter([False, True, False, True, True, True, False])
    log = {"check": [], "select": [], "P": [], "after": []}
    real_qm, real_soc, real_rs, real_select = (_Crest._quadratic_model, _Crest._select_or_check,
                                               _Crest._random_subsets, _Crest.select)

    def qm(self):
        real_qm(self)
        return next(kappas)

    def soc(self, t, epoch):
        self._now = t
        return real_soc(self, t, epoch)

    def check(self):
        log["check"].append(self._now)
        return next(answers)

    def rs(self, P):
        log["P"].append(P)
        return real_rs(self, P)

    def select(self, epoch):
        log["select"].append(self._now)
        real_select(self, epoch)
        log["after"].append((self.ci, self.P))

    for name, fn in (("_quadratic_model", qm), ("_select_or_check", soc), ("check", check),
                     ("_random_subsets", rs), ("select", select)):
        monkeypatch.setattr(_Crest, name, fn)
    cfg = cfg_for(epochs=5, batch_size=4, check_interval=1, num_minibatch_coreset=5, interval_mul=1.5,
                  batch_num_mul=2.5)
    run = _Crest(cfg, ds, 0.5, ctx())
    assert (run.spe, run.total) == (8, 40)
    info = run.run()
    assert log["select"] == [8, 10, 16, 22, 23]
    assert log["check"] == [9, 10, 13, 16, 22, 23, 35]
    assert log["after"] == [(1, 5), (3, 7), (6, 8), (1, 2), (12, 8)]
    assert log["P"] == [5, 5, 7, 8, 2]  # each selection draws the P set by the one before
    assert next(answers, "done") == "done"
    assert info["check_interval"] == [1.0, 3.0, 12.0, 12.0, 12.0]  # at the end of each epoch
    assert info["num_coresets"] == [5.0, 7.0, 8.0, 8.0, 8.0]


def test_check_interval_is_capped_by_the_run_and_p_by_an_epoch(tiny_dataset, monkeypatch):
    ds = tiny_dataset(n_per_class=20, num_classes=3)
    kappas = iter([4.0, 1e-9, 0.0])
    real_qm = _Crest._quadratic_model

    def qm(self):
        real_qm(self)
        return next(kappas)

    monkeypatch.setattr(_Crest, "_quadratic_model", qm)
    run = _Crest(cfg_for(epochs=5, batch_size=4, batch_num_mul=2.5), ds, 0.5, ctx())
    run.select(1)
    for _ in range(2):
        run.select(1)
        assert (run.ci, run.P) == (run.total, run.spe) == (40, 8)


# --- (d) facility location against brute force ------------------------------------------------------
def naive_greedy(sim: torch.Tensor, k: int, follow: list[int] | None = None) -> list[int]:
    """Plain greedy on F(S) = Σ_i max_{j∈S} s_ij: add the point of largest gain, lowest index on ties. Gains
    within 1e-6 of the best count as ties (symmetric pairs tie exactly in theory and differ in float32
    rounding); on such a tie the point given by ``follow`` at that step is taken when it is one of them."""
    n = sim.shape[0]
    chosen: list[int] = []
    for step in range(min(k, n)):
        gains = {j: value(sim, chosen + [j]) - value(sim, chosen) for j in range(n) if j not in chosen}
        top = max(gains.values())
        ties = [j for j, gain in gains.items() if gain >= top - 1e-6]
        pick = follow[step] if follow is not None and step < len(follow) and follow[step] in ties else ties[0]
        chosen.append(pick)
    return chosen


def value(sim: torch.Tensor, S) -> float:
    if not S:
        return 0.0
    return sum(max(float(sim[i, j]) for j in S) for i in range(sim.shape[0]))


def cluster_sizes(sim: torch.Tensor, S: list[int]) -> list[float]:
    sizes = [0.0] * len(S)
    for i in range(sim.shape[0]):
        best = max(range(len(S)), key=lambda m: (float(sim[i, S[m]]), -m))  # first in greedy order on ties
        sizes[best] += 1
    return sizes


@pytest.mark.parametrize("seed", range(6))
def test_greedy_facility_location_against_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    n, d = 7, 3
    G = 4
    feats = torch.randn(G, n, d, generator=g) * (0.5 + seed)
    sim = euclidean_similarity(feats)
    sizes = torch.tensor([7, 6, 5, 7])  # ground-set sizes (padding after)
    valid = torch.arange(n).view(1, -1) < sizes.view(-1, 1)
    for k in (1, 2, 3, 4):
        sel, w = facility_location_greedy(sim, k, valid)
        for gi in range(G):
            m = int(sizes[gi])
            s = sim[gi, :m, :m]
            picked = [int(j) for j in sel[gi] if j >= 0]
            naive = naive_greedy(s, k, follow=picked)
            assert picked == naive, f"set {gi}, budget {k}: greedy picks {picked}, the naive loop {naive}"
            got = value(s, picked)
            assert got == pytest.approx(value(s, naive), rel=1e-6)
            best = max(value(s, list(c)) for c in itertools.combinations(range(m), min(k, m)))
            assert got >= (1 - 1 / math.e) * best - 1e-6
            assert got <= best + 1e-5
            sizes_by_hand = cluster_sizes(s, picked)
            assert w[gi, :len(picked)].tolist() == sizes_by_hand, (
                f"set {gi}, budget {k}: weights {w[gi].tolist()} are not the cluster sizes {sizes_by_hand}")
            assert sum(w[gi].tolist()) == m
