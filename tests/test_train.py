"""Training (smallset/train.py): the weighted loss by hand, learning and determinism on tiny data, protocols
and their errors, and the evaluation schedule (docs/methods/evaluation.md) read off the optimiser steps."""
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from smallset.errors import SmallsetError
from smallset.models import create_model
from smallset.train import PROTOCOLS, Protocol, evaluate, fit, get_protocol, weighted_cross_entropy

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
    assert (p.lr, p.momentum, p.weight_decay, p.batch_size, p.epochs, p.schedule) == \
        (0.01, 0.9, 5e-4, 256, 300, "reference")
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


# --- the evaluation schedule, read off the optimiser steps --------------------------------------------------
# The evaluation schedule (docs/methods/evaluation.md): how many passes over the reduced set ``fit`` makes and
# at which pass the learning rate drops, read off the optimiser steps themselves (issue 10).
#
# The reference routine (``evaluate_synset`` in VICO-UoE/DatasetCondensation ``utils.py``, shared by DC, DSA and
# DM; CAFE's copy is the same):
#
#     lr_schedule = [Epoch // 2 + 1]
#     for ep in range(Epoch + 1):                      # Epoch + 1 passes, ep = 0 .. Epoch
#         train one epoch
#         if ep in lr_schedule:                        # AFTER training pass ep == Epoch // 2 + 1
#             lr *= 0.1; optimizer = SGD(lr, momentum 0.9, weight decay 5e-4)   # fresh momentum
#
# So passes 0 .. Epoch//2 + 1 (Epoch//2 + 2 of them) run at lr and passes Epoch//2 + 2 .. Epoch at lr/10
# (Epoch = 1000: 502 passes at 0.01, 499 at 0.001; Epoch = 2: all 3 passes at lr, the decay comes after the last).
# smallset's ``schedule="reference"`` (the ``paper`` presets) must do exactly this; ``schedule="half"`` (``quick``,
# ``demo``) trains E passes and decays after pass index E//2.

LR = 0.01
STEPS_PER_PASS = 2  # 6 images, batches of 3


def reference_lrs(E: int) -> list[float]:
    """lr of every pass of the reference's evaluate_synset with Epoch = E."""
    return [LR if ep <= E // 2 + 1 else LR * 0.1 for ep in range(E + 1)]


def half_lrs(E: int) -> list[float]:
    """lr of every pass of the ``half`` schedule: E passes, the decay after pass index E//2."""
    return [LR if ep + 1 <= E // 2 + 1 else LR * 0.1 for ep in range(E)]


def record_fit(monkeypatch, protocol: Protocol):
    """Run fit with a spy on SGD.step; returns (per-step records, epoch losses, on_epoch indices)."""
    records = []
    real_step = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        g = self.param_groups[0]
        records.append({"opt": self, "lr": g["lr"], "momentum": g["momentum"], "wd": g["weight_decay"],
                        "fresh": len(self.state) == 0})
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    ds = make_tiny_dataset(n_per_class=2, num_classes=3)
    torch.manual_seed(0)
    model = create_model("mlp", 1, 3, (8, 8), width=4)
    seen = []
    losses = fit(model, ds, protocol, seed=0,
                 on_epoch=lambda ep, loss: seen.append(ep))
    return records, losses, seen


def check_schedule(records, losses, seen, want_lrs):
    passes = len(want_lrs)
    assert len(losses) == passes and seen == list(range(passes)), (
        f"{len(losses)} passes over the data, expected {passes}")
    assert len(records) == passes * STEPS_PER_PASS
    got = [r["lr"] for r in records[::STEPS_PER_PASS]]
    assert all(a["lr"] == b["lr"] for a, b in zip(records[::2], records[1::2]))  # one lr per pass
    assert got == pytest.approx(want_lrs), f"lr per pass {got}, expected {want_lrs}"
    assert all(r["momentum"] == 0.9 and r["wd"] == 5e-4 for r in records)
    # A new optimiser (empty momentum buffer) exactly where the lr drops, and only there.
    switches = [i for i in range(1, len(records)) if records[i]["opt"] is not records[i - 1]["opt"]]
    drops = [i for i in range(1, len(records)) if records[i]["lr"] != records[i - 1]["lr"]]
    assert switches == drops, (
        f"new optimisers at steps {switches}, lr drops at steps {drops}: the decay must make a fresh optimiser")
    assert all(records[i]["fresh"] for i in [0] + switches)


@pytest.mark.parametrize("E", [1, 2, 4, 5])
def test_reference_schedule_is_evaluate_synset(monkeypatch, E):
    check_schedule(*record_fit(monkeypatch, Protocol("t", epochs=E, lr=LR, batch_size=3, schedule="reference")),
                   reference_lrs(E))


@pytest.mark.parametrize("E", [4, 5])
def test_paper_preset_uses_the_reference_schedule(monkeypatch, E):
    protocol = replace(get_protocol("paper", epochs=E), batch_size=3)
    check_schedule(*record_fit(monkeypatch, protocol), reference_lrs(E))


@pytest.mark.parametrize("E", [1, 2, 4, 5])
def test_half_schedule(monkeypatch, E):
    check_schedule(*record_fit(monkeypatch, Protocol("t", epochs=E, lr=LR, batch_size=3, schedule="half")),
                   half_lrs(E))


def test_expected_schedules_by_hand():
    """The two rules spelled out for Epoch = 4 and 5 (6 images, 2 steps per pass)."""
    assert reference_lrs(4) == [LR, LR, LR, LR, LR * 0.1]
    assert reference_lrs(5) == [LR, LR, LR, LR, LR * 0.1, LR * 0.1]
    assert reference_lrs(2) == [LR, LR, LR]
    assert half_lrs(4) == [LR, LR, LR, LR * 0.1]
    assert half_lrs(5) == [LR, LR, LR, LR * 0.1, LR * 0.1]
    E = 1000
    lrs = reference_lrs(E)
    assert len(lrs) == 1001 and lrs.count(LR) == 502 and lrs.count(LR * 0.1) == 499


def test_reference_schedule_decays_at_the_middle_of_a_stretched_run():
    """min_steps can stretch a run: the decay follows the passes actually trained, not the preset's E."""
    from smallset.train import Protocol

    p = Protocol("stretched", epochs=2, batch_size=2, min_steps=20, schedule="reference")
    assert p.epochs_for(4) == 11  # max(2, ceil(20 / 2)) + 1 passes
    assert p.decay_after(4) == 10 // 2 + 1
