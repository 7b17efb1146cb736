"""Contract tests for every registered evaluation preset, schedule and optimiser (smallset.protocols).

Parametrised over the registries, so a new module in smallset/protocols/ is tested with no other edit
(docs/adding-a-component.md). Tiny data and models: the whole file runs in seconds.
"""
import math
from dataclasses import replace

import pytest
import torch

from smallset.augment import get_augmentation
from smallset.errors import SmallsetError
from smallset.models import create_model
from smallset.protocols import OPTIMIZERS, PROTOCOLS, SCHEDULES, Protocol
from smallset.train import fit

from helpers import make_tiny_dataset

N_EXAMPLES = 6  # the tiny training set: 3 classes × 2, 1×8×8


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("mlp", 1, 3, (8, 8), width=4)


def params_of(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def record_steps(monkeypatch, protocol: Protocol) -> list[dict]:
    """Fit a tiny model with ``protocol``; the optimiser, its lr and whether it is fresh, at every step."""
    records = []
    model = tiny_model()
    opt_cls = type(OPTIMIZERS.get(protocol.optimizer)().make(model.parameters(), protocol, protocol.lr))
    real_step = opt_cls.step

    def step(self, *args, **kwargs):
        records.append({"opt": self, "lr": self.param_groups[0]["lr"], "fresh": len(self.state) == 0})
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(opt_cls, "step", step)
    fit(model, make_tiny_dataset(n_per_class=2, num_classes=3), protocol, seed=0)
    return records


# --- presets ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PROTOCOLS.names())
def test_preset_is_well_formed(name):
    p = PROTOCOLS.get(name)
    assert isinstance(p, Protocol) and p.name == name
    assert p.schedule in SCHEDULES and p.optimizer in OPTIMIZERS, f"{name} names an unregistered schedule/optimiser"
    get_augmentation(p.augment)  # a registered augmentation (or none)
    assert p.epochs >= 1 and p.batch_size >= 1 and p.min_steps >= 0
    assert math.isfinite(p.lr) and p.lr > 0 and p.weight_decay >= 0 and p.momentum >= 0
    assert Protocol(**p.to_dict()) == p  # the recipe logged with every run rebuilds the preset
    assert p.describe().startswith(f"{name}: ") and f"{p.schedule} schedule" in p.describe()
    assert p.epochs_for(N_EXAMPLES) >= p.epochs


@pytest.mark.parametrize("name", PROTOCOLS.names())
def test_preset_trains_a_tiny_model_deterministically(name):
    p = replace(PROTOCOLS.get(name), epochs=2, min_steps=0, batch_size=4)
    ds = make_tiny_dataset(n_per_class=2, num_classes=3)
    runs = []
    for _ in range(2):
        model = tiny_model()
        before = params_of(model)
        losses = fit(model, ds, p, seed=3)
        assert len(losses) == p.epochs_for(len(ds)) and all(math.isfinite(v) for v in losses)
        after = params_of(model)
        assert any(not torch.equal(a, b) for a, b in zip(before, after)), f"{name} did not train the model"
        assert all(torch.isfinite(t).all() for t in after)
        runs.append((losses, after))
    assert runs[0][0] == runs[1][0] and all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1])), (
        f"{name}: the same seed gave different training")


# --- schedules -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SCHEDULES.names())
def test_schedule_gives_finite_positive_lrs_over_its_passes(name):
    schedule = SCHEDULES.get(name)()
    base_lr = 0.05
    for epochs in (1, 2, 5, 11):
        passes = schedule.passes(epochs)
        assert isinstance(passes, int) and passes >= epochs, f"{name}: {passes} passes for {epochs} epochs"
        restart = schedule.decay_after(passes)
        assert restart is None or 0 <= restart < passes, f"{name}: decay after pass {restart} of {passes}"
        for steps_per_pass in (1, 3):
            total = passes * steps_per_pass
            lrs = [schedule.lr(base_lr, s, total, s // steps_per_pass, passes) for s in range(total)]
            assert all(isinstance(v, float) and math.isfinite(v) and 0 < v <= base_lr for v in lrs), (
                f"{name}: lrs {lrs} for {passes} passes of {steps_per_pass} steps (finite, in (0, peak])")
            assert lrs == [schedule.lr(base_lr, s, total, s // steps_per_pass, passes) for s in range(total)]


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_fit_follows_the_schedule_step_by_step(monkeypatch, name):
    """What the schedule says is what fit does: the lr of every optimiser step, and a fresh optimiser (no
    momentum) exactly after the schedule's decay pass."""
    p = Protocol("t", epochs=4, lr=0.03, batch_size=4, schedule=name)  # 6 examples: 2 steps per pass
    records = record_steps(monkeypatch, p)
    schedule, passes = SCHEDULES.get(name)(), p.epochs_for(N_EXAMPLES)
    total = passes * 2
    assert len(records) == total
    assert [r["lr"] for r in records] == [schedule.lr(p.lr, s, total, s // 2, passes) for s in range(total)]
    restart = schedule.decay_after(passes)
    new_opts = [s for s in range(1, total) if records[s]["opt"] is not records[s - 1]["opt"]]
    want = [] if restart is None or restart == passes - 1 else [2 * (restart + 1)]
    assert new_opts == want and all(records[s]["fresh"] for s in [0] + new_opts)


def test_unknown_schedule_and_optimiser_are_refused_with_the_known_ones():
    with pytest.raises(SmallsetError, match=r"Unknown schedule 'nope'; known schedules: .*cosine"):
        Protocol("t", epochs=1, schedule="nope").epochs_for(5)
    with pytest.raises(SmallsetError, match=r"Unknown optimizer 'nope'; known optimizers: .*sgd"):
        Protocol("t", epochs=1, optimizer="nope").describe()


# --- optimisers ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_optimizer_builds_at_the_given_lr_and_steps(name):
    optimizer = OPTIMIZERS.get(name)()
    p = Protocol("t", epochs=1, optimizer=name)
    model = tiny_model()
    opt = optimizer.make(model.parameters(), p, 0.02)
    assert isinstance(opt, torch.optim.Optimizer)
    assert all(g["lr"] == 0.02 for g in opt.param_groups)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    before = params_of(model)
    ds = make_tiny_dataset(n_per_class=2, num_classes=3)
    torch.nn.functional.cross_entropy(model(ds.normalized()), ds.labels).backward()
    opt.step()
    after = params_of(model)
    assert any(not torch.equal(a, b) for a, b in zip(before, after)) and all(torch.isfinite(t).all() for t in after)
    assert p.describe().startswith("t: 1 epochs (half schedule), ") and optimizer.describe(p)


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_optimizer_trains_with_fit(name):
    p = Protocol("t", epochs=2, batch_size=4, optimizer=name)
    losses = fit(tiny_model(), make_tiny_dataset(n_per_class=2, num_classes=3), p, seed=0)
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
