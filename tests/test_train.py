import torch
import torch.nn.functional as F
import pytest

from smallset.errors import SmallsetError
from smallset.models import create_model
from smallset.train import PROTOCOLS, evaluate, fit, get_protocol, weighted_cross_entropy
from helpers import make_tiny_dataset


def test_weighted_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0])
    ce = F.cross_entropy(logits, y, reduction="none")
    w = torch.tensor([3.0, 1.0])
    assert torch.isclose(weighted_cross_entropy(logits, y, w), (3 * ce[0] + ce[1]) / 4)
    # uniform weights of any scale give the plain mean
    assert torch.isclose(weighted_cross_entropy(logits, y, torch.tensor([5.0, 5.0])), ce.mean())


def test_weights_change_training():
    ds = make_tiny_dataset(n_per_class=10)
    p = get_protocol("quick", epochs=3)
    runs = []
    for weights in (None, torch.linspace(0.1, 3.0, len(ds))):
        ds.weights = weights
        torch.manual_seed(0)
        m = create_model("mlp", 1, 3, (8, 8), width=16)
        fit(m, ds, p, seed=0)
        runs.append(torch.cat([q.detach().flatten() for q in m.parameters()]))
    assert not torch.allclose(runs[0], runs[1])


def test_training_loss_goes_down_and_same_seed_same_model():
    ds = make_tiny_dataset(n_per_class=20)
    p = get_protocol("quick", epochs=100)
    params = []
    for _ in range(2):
        torch.manual_seed(1)
        m = create_model("mlp", 1, 3, (8, 8), width=16)
        losses = fit(m, ds, p, seed=7)
        params.append(torch.cat([q.detach().flatten() for q in m.parameters()]))
    assert losses[-1] < 0.5 * losses[0]
    assert torch.equal(params[0], params[1])


def test_evaluate_reports_mean_std_and_is_reproducible():
    train = make_tiny_dataset(n_per_class=20, seed=0)
    test = make_tiny_dataset(n_per_class=10, seed=0)
    p = get_protocol("quick", epochs=20)
    a = evaluate(train, test, "mlp", p, runs=2, seed=0, model_kwargs={"width": 16})
    b = evaluate(train, test, "mlp", p, runs=2, seed=0, model_kwargs={"width": 16})
    assert a.accuracies == b.accuracies and len(a.accuracies) == 2
    assert a.mean > 0.9  # templates are separable
    assert a.std == pytest.approx(float(torch.tensor(a.accuracies).std(unbiased=False)))
    assert all(s > 0 for s in a.train_seconds)


def test_paper_protocol_is_the_condensation_recipe():
    p = PROTOCOLS.get("paper")
    assert (p.lr, p.momentum, p.weight_decay, p.batch_size, p.epochs, p.schedule) == (0.01, 0.9, 5e-4, 256, 300, "reference")
    assert PROTOCOLS.get("paper-1000").epochs == 1000


def test_quick_protocol_gives_small_sets_enough_steps():
    p = PROTOCOLS.get("quick")
    assert p.epochs_for(50) == 200  # one step per epoch → 200 epochs
    assert p.epochs_for(5000) == p.epochs  # 40 steps per epoch → the base 20 epochs


def test_lr_decays_after_half_with_a_fresh_optimiser(monkeypatch):
    made = []
    real = torch.optim.SGD

    def spy(params, lr, **kw):
        made.append(lr)
        return real(params, lr=lr, **kw)

    monkeypatch.setattr(torch.optim, "SGD", spy)
    ds = make_tiny_dataset(n_per_class=2)
    fit(create_model("mlp", 1, 3, (8, 8), width=4), ds, get_protocol("paper", epochs=4), seed=0)
    assert made == [0.01, pytest.approx(0.001)]


def test_bad_protocol_and_runs():
    with pytest.raises(SmallsetError, match="Unknown protocol"):
        get_protocol("slow")
    ds = make_tiny_dataset(n_per_class=2)
    with pytest.raises(SmallsetError, match="eval_runs"):
        evaluate(ds, ds, "mlp", "quick", runs=0)
