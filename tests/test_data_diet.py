"""EL2N and GraNd (prune/el2n.py, prune/grand.py, prune/_scoring.py, prune/_training.py): the scores against a
hand computation on a two-layer network with known weights, the average over scoring runs, the scoring-run
recipe, the selection, determinism and bad options. docs/methods/el2n.md, docs/methods/grand.md."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from smallset import prune  # noqa: F401  (registers every selector)
from smallset.context import RunContext
from smallset.data import ImageDataset
from smallset.errors import SmallsetError
from smallset.models import seeded_model as registry_model
from smallset.prune import _scoring
from smallset.prune._training import augment_flags, crop_flip, warmup_multistep_lr
from smallset.prune.base import SELECTORS, class_budgets
from smallset.prune.crest import CrestConfig, lr_for_epoch
from smallset.prune.el2n import EL2NConfig, EL2NSelector, el2n_scores
from smallset.prune.grand import GraNdConfig, GraNdSelector, grand_scores

CTX = dict(model="mlp", model_kwargs={"width": 16})

# A two-layer network with known weights: h = relu(W1 x + b1), z = W2 h + b2 (3 classes).
W1 = [[1.0, -1.0], [0.5, 2.0]]
B1 = [0.0, -1.0]
W2 = [[2.0, -1.0], [-1.0, 1.0], [0.5, 0.5]]
B2 = [0.1, 0.0, -0.1]
X = [[1.0, 2.0], [2.0, 0.5], [0.0, 0.0]]  # example 0 has a dead first unit (pre-activation −1)
Y = [1, 0, 2]


class TwoLayer(nn.Module):
    def __init__(self, w1=W1, b1=B1, w2=W2, b2=B2):
        super().__init__()
        self.body = nn.Linear(2, 2)
        self.classifier = nn.Linear(2, 3)
        with torch.no_grad():
            self.body.weight.copy_(torch.tensor(w1))
            self.body.bias.copy_(torch.tensor(b1))
            self.classifier.weight.copy_(torch.tensor(w2))
            self.classifier.bias.copy_(torch.tensor(b2))

    def embed(self, x):
        return torch.relu(self.body(x.flatten(1)))

    def forward(self, x):
        return self.classifier(self.embed(x))


def by_hand(x, y, w1=W1, b1=B1, w2=W2, b2=B2):
    """(EL2N, GraNd over all parameters, ‖h‖) of one example with plain Python arithmetic: the chain rule written
    out (∂ℓ/∂z = p − e_y; ∂ℓ/∂W2 = (p − e_y) hᵀ; ∂ℓ/∂h = W2ᵀ(p − e_y); ∂ℓ/∂a = ∂ℓ/∂h ⊙ [a > 0]; ∂ℓ/∂W1 = ∂ℓ/∂a xᵀ)."""
    a = [sum(w1[i][j] * x[j] for j in range(2)) + b1[i] for i in range(2)]
    h = [max(0.0, v) for v in a]
    z = [sum(w2[k][i] * h[i] for i in range(2)) + b2[k] for k in range(3)]
    ez = [math.exp(v) for v in z]
    p = [v / sum(ez) for v in ez]
    e = [p[k] - (1.0 if k == y else 0.0) for k in range(3)]
    el2n = math.sqrt(sum(v * v for v in e))
    g_w2 = sum((e[k] * h[i]) ** 2 for k in range(3) for i in range(2))
    g_b2 = sum(v * v for v in e)
    g_h = [sum(w2[k][i] * e[k] for k in range(3)) for i in range(2)]
    g_a = [g_h[i] if a[i] > 0 else 0.0 for i in range(2)]
    g_w1 = sum((g_a[i] * x[j]) ** 2 for i in range(2) for j in range(2))
    g_b1 = sum(v * v for v in g_a)
    return el2n, math.sqrt(g_w2 + g_b2 + g_w1 + g_b1), math.sqrt(sum(v * v for v in h))


def xy():
    return torch.tensor(X), torch.tensor(Y)


def test_registered_with_the_papers_defaults():
    assert SELECTORS.get("el2n") is EL2NSelector and SELECTORS.get("grand") is GraNdSelector
    for cls in (EL2NSelector, GraNdSelector):
        assert cls.higher_is_keep is True and cls.uses_model is True
    e, g = EL2NConfig(), GraNdConfig()
    assert (e.models, e.epochs, g.models, g.epochs, g.gradient) == (10, 20, 10, 0, "full")
    assert (e.lr, e.momentum, e.weight_decay, e.batch_size, e.lr_milestones, e.lr_gamma) == (
        0.1, 0.9, 5e-4, 128, "60,120,160", 0.2)
    keys = set(EL2NSelector().prepare_params())
    assert {"models", "epochs", "lr", "augment", "batch_size"} <= keys and "balance" not in keys
    assert "gradient" in GraNdSelector().prepare_params()


def test_el2n_matches_the_hand_computation():
    x, y = xy()
    got = el2n_scores(TwoLayer(), x, y, batch_size=2)  # two chunks
    want = [by_hand(X[i], Y[i])[0] for i in range(3)]
    assert got.tolist() == pytest.approx(want, rel=1e-6)
    assert bool((got >= 0).all()) and bool((got <= math.sqrt(2)).all())


def test_grand_matches_the_hand_computation_over_all_parameters():
    x, y = xy()
    got = grand_scores(TwoLayer(), x, y, "full")
    want = [by_hand(X[i], Y[i])[1] for i in range(3)]
    assert got.tolist() == pytest.approx(want, rel=1e-5)


def test_grand_last_layer_is_el2n_times_the_feature_norm():
    x, y = xy()
    got = grand_scores(TwoLayer(), x, y, "last_layer")
    want = [by_hand(X[i], Y[i])[0] * math.sqrt(by_hand(X[i], Y[i])[2] ** 2 + 1) for i in range(3)]
    assert got.tolist() == pytest.approx(want, rel=1e-5)


def test_grand_vectorised_equals_a_loop_of_single_example_gradients(tiny_dataset):
    """A batch-norm ConvNet in eval mode: the vmap path equals autograd on one example at a time."""
    ds = tiny_dataset(n_per_class=3, num_classes=3)
    model = registry_model("convnet", 1, 3, (8, 8), 0, width=4, depth=2, norm="batchnorm")
    model.train()
    with torch.no_grad():  # move the running statistics away from (0, 1), so eval mode matters
        model(ds.normalized() * 3 + 1)
    x, y = ds.normalized(), ds.labels
    got = grand_scores(model, x, y, "full")
    model.eval()
    want = []
    for i in range(len(y)):
        loss = F.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
        grads = torch.autograd.grad(loss, list(model.parameters()))
        want.append(float(torch.sqrt(sum((g * g).sum() for g in grads))))
    assert got.tolist() == pytest.approx(want, rel=1e-4)


def tiny_known_dataset():
    return ImageDataset(images=torch.tensor(X).view(3, 1, 1, 2), labels=torch.tensor(Y),
                        classes=["a", "b", "c"], mean=(0.0,), std=(1.0,))


@pytest.mark.parametrize("cls,column", [(EL2NSelector, 0), (GraNdSelector, 1)])
def test_prepare_averages_the_runs_scores_in_eval_mode(monkeypatch, cls, column):
    """Two scoring runs with known weights: the prepared score is the mean of the two hand computations."""
    other = dict(w1=[[0.5, 1.0], [-1.0, 1.0]], b1=[0.2, 0.1], w2=[[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]],
                 b2=[0.0, 0.0, 0.0])
    runs = []

    def fake_run(ds, ctx, cfg, run, x, y):
        runs.append(run)
        model = TwoLayer() if run == 0 else TwoLayer(**other)
        model.train()  # prepare must score in eval mode whatever the run left
        return model

    monkeypatch.setattr(_scoring, "scoring_run", fake_run)
    got = cls(cls.config_cls(models=2)).prepare(tiny_known_dataset(), RunContext()).value
    want = [(by_hand(X[i], Y[i])[column] + by_hand(X[i], Y[i], **other)[column]) / 2 for i in range(3)]
    assert runs == [0, 1]
    assert got.dtype == torch.float32 and got.tolist() == pytest.approx(want, rel=1e-5)


def test_epoch_zero_scores_the_seeded_initialisation(tiny_dataset):
    ds = tiny_dataset(n_per_class=4, num_classes=3)
    ctx = RunContext(seed=4, **CTX)
    got = EL2NSelector(EL2NConfig(models=2, epochs=0)).prepare(ds, ctx).value
    from smallset.prune._features import seeded_model

    x, y = ds.normalized(), ds.labels
    want = (el2n_scores(seeded_model(ds, ctx, 0), x, y).double()
            + el2n_scores(seeded_model(ds, ctx, 1000), x, y).double()) / 2
    assert torch.allclose(got.double(), want, atol=1e-6)


def test_scoring_runs_train_reproducibly_and_independently(tiny_dataset):
    ds = tiny_dataset(n_per_class=16, num_classes=3, noise=0.5)
    cfg = EL2NConfig(models=2, epochs=3, batch_size=16, lr=0.05)
    a = EL2NSelector(cfg).prepare(ds, RunContext(seed=3, **CTX)).value
    b = EL2NSelector(cfg).prepare(ds, RunContext(seed=3, **CTX)).value
    assert torch.equal(a, b)
    assert not torch.equal(a, EL2NSelector(cfg).prepare(ds, RunContext(seed=4, **CTX)).value)
    init = EL2NSelector(EL2NConfig(models=2, epochs=0)).prepare(ds, RunContext(seed=3, **CTX)).value
    assert float(a.mean()) < float(init.mean())  # three epochs of training lower the error norms
    x, y = ds.normalized(), ds.labels
    m0 = _scoring.scoring_run(ds, RunContext(seed=3, **CTX), cfg, 0, x, y)
    m1 = _scoring.scoring_run(ds, RunContext(seed=3, **CTX), cfg, 1, x, y)
    assert not m0.training  # returned in eval mode
    assert not torch.equal(next(m0.parameters()), next(m1.parameters()))  # independent initialisations


def test_selection_keeps_the_highest_scores_per_class_or_globally(tiny_dataset):
    ds = tiny_dataset(n_per_class=10, num_classes=3)
    scores = torch.zeros(len(ds))
    for c, idx in enumerate(ds.class_indices()):
        scores[idx] = 10.0 * (2 - c) + (torch.arange(len(idx)) * 7 % 10).float() / 10
    out = EL2NSelector().select(ds, 0.3, RunContext(seed=0), prepared=scores)
    budgets = class_budgets(ds.class_counts(), 0.3)
    for c, idx in enumerate(ds.class_indices()):
        kept = set(out.indices.tolist()) & set(idx.tolist())
        assert kept == set(idx[torch.argsort(scores[idx], descending=True)[:budgets[c]]].tolist())
    assert torch.equal(out.weights, torch.ones(len(out.indices))) and torch.equal(out.scores, scores)
    glob = GraNdSelector(GraNdConfig(balance=False)).select(ds, 0.3, RunContext(seed=0), prepared=scores)
    assert set(glob.indices.tolist()) == set(torch.argsort(scores, descending=True)[:9].tolist())  # all class 0


def test_select_without_prepared_scores_prepares_itself(tiny_dataset):
    ds = tiny_dataset(n_per_class=6, num_classes=3)
    sel = GraNdSelector(GraNdConfig(models=2, epochs=1, batch_size=8))
    ctx = RunContext(seed=1, **CTX)
    a = sel.select(ds, 0.5, ctx)
    state = sel.prepare(ds, ctx)
    b = sel.select(ds, 0.5, ctx, prepared=state)
    assert torch.equal(a.indices, b.indices)
    # the runs' information travels in the state, and reduce reports it with the set
    assert len(state.info["run_mean_grand"]) == 2 and len(state.units) == 2
    assert sel.reduce(ds, 0.5, ctx, state).info["run_mean_grand"] == state.info["run_mean_grand"]


@pytest.mark.parametrize("field,value", [("models", 0), ("epochs", -1), ("batch_size", 0), ("lr", 0.0),
                                         ("momentum", -0.1), ("weight_decay", -1.0), ("lr_gamma", 0.0),
                                         ("lr_milestones", "10,x"), ("augment", "rotate")])
def test_bad_options_are_refused_with_one_sentence_naming_the_field(tiny_dataset, field, value):
    ds = tiny_dataset(n_per_class=2, num_classes=2)
    with pytest.raises(SmallsetError) as err:
        cfg = EL2NSelector.make_config({field: value})
        EL2NSelector(cfg).prepare(ds, RunContext(**CTX))
    assert err.value.option == field
    assert str(err.value).count(". ") == 0 and str(err.value).endswith(".")


# --- the shared training helpers (prune/_training.py) -------------------------------------------------
def test_crop_flip_is_a_crop_of_the_reflect_padded_image_then_a_flip():
    x = torch.arange(2 * 2 * 5 * 6, dtype=torch.float32).view(2, 2, 5, 6)
    out = crop_flip(x, torch.Generator().manual_seed(0), crop=True, flip=True, pad=2)
    g = torch.Generator().manual_seed(0)  # replay the draws: offsets (rows, then columns), then flips
    oy, ox = torch.randint(0, 5, (2,), generator=g), torch.randint(0, 5, (2,), generator=g)
    flips = torch.rand(2, generator=g) < 0.5
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    for i in range(2):
        want = padded[i, :, oy[i]:oy[i] + 5, ox[i]:ox[i] + 6]
        assert torch.equal(out[i], want.flip(2) if flips[i] else want)
    assert torch.equal(crop_flip(x, torch.Generator(), crop=False, flip=False), x)
    assert augment_flags("auto", 1) == (True, False) and augment_flags("auto", 3) == (True, True)


def test_schedule_is_crests():
    for cfg in (CrestConfig(), CrestConfig(warmup_epochs=0, lr_milestones="3,5", lr_gamma=0.2)):
        ms = [int(m) for m in cfg.lr_milestones.split(",")]
        for e in range(0, 200):
            assert warmup_multistep_lr(cfg.lr, e, cfg.warmup_epochs, ms, cfg.lr_gamma) == pytest.approx(
                lr_for_epoch(cfg, e))
    assert warmup_multistep_lr(0.1, 59, 0, [60, 120, 160], 0.2) == 0.1  # EL2N's epoch 20 is before any decay
    assert warmup_multistep_lr(0.1, 60, 0, [60, 120, 160], 0.2) == pytest.approx(0.02)
