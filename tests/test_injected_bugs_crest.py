"""CREST (docs/methods/crest.md#crest-quadratic-model, #crest-adaptive-interval, #crest-coreset-selection)
against computations written here: the quadratic model from an explicit Hessian, δ as the parameter change
since the selection, the check-interval / P rule on scripted κ, and greedy facility location against brute
force (issue 10)."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from smallset.context import RunContext
from smallset.prune.crest import CrestConfig, _Crest
from smallset.prune.submodular import euclidean_similarity, facility_location_greedy

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


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
        f = lambda t: loss_of(t, idx, w)  # noqa: E731
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
