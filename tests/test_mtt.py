"""MTT (docs/methods/mtt.md): the trajectory loss by hand on a 2-layer network, the unrolled student against
torch.optim.SGD and finite differences, the expert cache (hits, misses, growth, files loaded with
weights_only), resume after an interrupted expert phase and after an interrupted distillation (syn_lr and its
optimiser), the start-epoch range (DATM), the memory hook and the pre-run refusal, config and errors."""
import dataclasses
import json
import typing

import pytest
import torch
import torch.nn as nn

from smallset.context import RunContext
from smallset.distill import CONDENSERS, _experts
from smallset.distill.mtt import (
    CIFAR10_ROWS,
    FlatModel,
    MTTCondenser,
    MTTConfig,
    start_epoch_bound,
    student_batches,
    trajectory_loss,
    unroll,
)
from smallset.errors import SmallsetError

from helpers import straight_and_resumed

MODEL_KW = {"width": 8, "depth": 2}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every test gets its own empty expert cache."""
    d = tmp_path / "cache"
    monkeypatch.setenv(_experts.CACHE_ENV, str(d))
    return d


def ctx(seed=0, **kw):
    return RunContext(seed=seed, model="convnet-s", model_kwargs=dict(MODEL_KW), **kw)


SMALL = dict(iterations=4, num_experts=2, train_epochs=3, syn_steps=2, expert_epochs=1, max_start_epoch=3,
             expert_batch=8, lr_img=10.0, lr_lr=1e-3)


def make(**kw):
    return MTTCondenser(MTTCondenser.config_for_ipc(2, **{**SMALL, **kw}))


@pytest.fixture
def ds(tiny_dataset):
    return tiny_dataset(n_per_class=8, num_classes=3, channels=1, size=8)


def count_trainings(monkeypatch) -> list[int]:
    """Record the index of every expert trained from here on."""
    trained: list[int] = []
    real = _experts.train_expert

    def counting(i, *a, **k):
        trained.append(i)
        return real(i, *a, **k)

    monkeypatch.setattr(_experts, "train_expert", counting)
    return trained


# --- config -------------------------------------------------------------------------------------------
def test_registered_with_the_paper_rows_and_recipe():
    assert CONDENSERS.get("mtt") is MTTCondenser and MTTCondenser.uses_model
    c = MTTConfig()
    assert (c.iterations, c.num_experts, c.train_epochs, c.expert_lr, c.expert_batch, c.expert_dsa) == \
        (5000, 100, 50, 0.01, 256, True)
    assert (c.momentum, c.batch_syn, c.init, c.dsa, c.min_start_epoch) == (0.5, 0, "real", True, 0)
    for ipc, row in ((1, 1), (10, 10), (20, 10), (50, 50), (200, 50)):
        cfg = MTTConfig.for_ipc(ipc)
        assert (cfg.syn_steps, cfg.expert_epochs, cfg.max_start_epoch, cfg.lr_img, cfg.lr_lr, cfg.lr_teacher) == \
            CIFAR10_ROWS[row]
    assert CIFAR10_ROWS[1][:3] == (50, 2, 2) and CIFAR10_ROWS[10][:3] == (30, 2, 20) and CIFAR10_ROWS[50][:3] == (30,
                                                                                                                  2, 40)
    # the preparation cache key is exactly the expert recipe (and the shared DSA strategy)
    prep = MTTCondenser().prepare_params()
    assert set(prep) == {"num_experts", "train_epochs", "expert_lr", "expert_batch", "expert_dsa", "dsa_strategy"}
    hints = typing.get_type_hints(MTTConfig)
    for f in dataclasses.fields(MTTConfig):
        assert f.metadata.get("help")
        assert hints[f.name] in (int, float, str, bool) or typing.get_origin(hints[f.name]) is typing.Literal


# --- the maths ------------------------------------------------------------------------------------------
def _two_layer():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))


def test_trajectory_loss_by_hand_on_a_two_layer_network():
    """One student step on a 2-layer ReLU network: θ₁ = θ₀ − α·∇CE with the gradient written out by hand
    (backprop through Linear–ReLU–Linear), L = ‖θ₁ − θ*‖² / ‖θ₀ − θ*‖², and ∂L/∂α = −2(θ₁ − θ*)·g / ‖θ₀ − θ*‖²."""
    net = _two_layer()
    model = FlatModel(net)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    theta0 = torch.cat([p.detach().flatten() for p in net.parameters()])
    target = theta0 + 0.1 * torch.randn(theta0.shape, generator=g)
    alpha = torch.tensor(0.3, requires_grad=True)

    theta1 = unroll(model, theta0, x, y, alpha, [torch.arange(6)])
    loss = trajectory_loss(theta1, theta0, target)
    loss.backward()

    W1, b1, W2, b2 = (p.detach() for p in net.parameters())
    pre = x @ W1.T + b1
    h = pre.clamp(min=0)
    logits = h @ W2.T + b2
    d_logits = (torch.softmax(logits, 1) - torch.eye(3)[y]) / len(x)
    dW2, db2 = d_logits.T @ h, d_logits.sum(0)
    d_pre = (d_logits @ W2) * (pre > 0).float()
    dW1, db1 = d_pre.T @ x, d_pre.sum(0)
    grad = torch.cat([dW1.flatten(), db1, dW2.flatten(), db2])
    hand_theta1 = theta0 - 0.3 * grad
    hand = ((hand_theta1 - target) ** 2).sum() / ((theta0 - target) ** 2).sum()
    assert torch.allclose(theta1.detach(), hand_theta1, atol=1e-6)
    assert float(loss.detach()) == pytest.approx(float(hand), rel=1e-5)
    hand_dalpha = -2 * ((hand_theta1 - target) * grad).sum() / ((theta0 - target) ** 2).sum()
    assert float(alpha.grad) == pytest.approx(float(hand_dalpha), rel=1e-4)


def test_loss_is_one_without_steps_or_step_size_and_zero_at_the_target():
    net = _two_layer()
    model = FlatModel(net)
    x, y = torch.randn(4, 4), torch.tensor([0, 1, 2, 0])
    theta0 = torch.cat([p.detach().flatten() for p in net.parameters()])
    target = theta0 + 0.05
    zero = torch.tensor(0.0)
    assert float(trajectory_loss(unroll(model, theta0, x, y, zero, [torch.arange(4)] * 3), theta0,
                                 target).detach()) == 1.0
    assert float(trajectory_loss(unroll(model, theta0, x, y, torch.tensor(0.1), []), theta0, target).detach()) == 1.0
    assert float(trajectory_loss(target.clone(), theta0, target)) == 0.0


def test_unrolled_steps_equal_plain_sgd_on_the_same_batches(ds):
    """N functional student steps = N steps of torch.optim.SGD(lr=α, momentum=0) on a real module."""
    from smallset.models import seeded_model

    net = seeded_model("convnet-s", 1, 3, (8, 8), 5, **MODEL_KW)
    model = FlatModel(net)
    x, y = ds.normalized()[:12], ds.labels[:12]
    batches = student_batches(12, 5, 4, torch.Generator().manual_seed(0))  # chunks of 5, 5, 2, then a new perm
    assert [len(b) for b in batches] == [2, 5, 5, 2]  # taken from the end, as the reference's pop()
    theta0 = torch.cat([p.detach().flatten() for p in net.parameters()])
    for steps in (1, 4):
        theta = unroll(model, theta0, x, y, torch.tensor(0.05), batches[:steps])
        ref = seeded_model("convnet-s", 1, 3, (8, 8), 5, **MODEL_KW)
        opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.0)
        for idx in batches[:steps]:
            loss = nn.functional.cross_entropy(ref(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        expected = torch.cat([p.detach().flatten() for p in ref.parameters()])
        assert torch.allclose(theta.detach(), expected, atol=1e-6), steps


@pytest.mark.parametrize("steps", [1, 2])
def test_image_gradient_matches_finite_differences(steps):
    """∂L/∂images through the unrolled steps (second-order terms included) against central differences."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    model = FlatModel(net)
    x = torch.randn(4, 1, 2, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 1, 0])
    theta0 = torch.cat([p.detach().flatten() for p in net.parameters()])
    target = theta0 + 0.2 * torch.randn_like(theta0)
    lr = torch.tensor(0.5, dtype=torch.float64)
    batches = [torch.arange(4)] * steps

    def f(images):
        return trajectory_loss(unroll(model, theta0, images, y, lr, batches), theta0, target)

    f(x).backward()
    eps, num = 1e-6, torch.zeros_like(x)
    for i in range(x.numel()):
        d = torch.zeros_like(x).view(-1)
        d[i] = eps
        d = d.view_as(x)
        num.view(-1)[i] = (f(x.detach() + d) - f(x.detach() - d)) / (2 * eps)
    assert torch.allclose(x.grad, num, atol=1e-7, rtol=1e-5)


def test_start_epochs_stay_in_range_and_datm_bound_grows(ds):
    cfg = MTTConfig(max_start_epoch=20, min_start_epoch=0)
    assert [start_epoch_bound(cfg, it) for it in (0, 100)] == [20, 20]
    datm = MTTConfig(max_start_epoch=20, min_start_epoch=0, initial_max_start_epoch=10, expansion_iterations=100)
    assert [start_epoch_bound(datm, it) for it in (0, 50, 100, 500)] == [10, 15, 20, 20]
    m = make(iterations=12, train_epochs=4, max_start_epoch=3, min_start_epoch=1, expert_epochs=2)
    out = m.condense(ds, 2, ctx())
    starts = out.info["start_epoch_curve"]
    assert len(starts) == 12 and set(starts) <= {1, 2} and set(starts) == {1, 2}


# --- the expert cache -------------------------------------------------------------------------------------
def test_experts_are_cached_and_reused_and_a_recipe_change_misses(ds, cache, monkeypatch):
    trained = count_trainings(monkeypatch)
    m = make()
    a = m.prepare(ds, ctx()).value
    assert trained == [0, 1]
    b = make(iterations=9, lr_img=3.0, syn_steps=5).prepare(ds, ctx()).value  # distillation options: same experts
    assert trained == [0, 1] and a == b
    # the layout: manifest + one file per expert, loaded with weights_only only
    d = cache / "experts"
    (buf_dir,) = list(d.iterdir())
    assert str(buf_dir) == a.path
    manifest = json.loads((buf_dir / "manifest.json").read_text())
    assert manifest["experts_done"] == 2 and manifest["epochs"] == 3 and manifest["snapshots"] == 4
    assert manifest["key"]["recipe"]["lr"] == 0.01 and manifest["key"]["model"] == "convnet-s"
    assert len(manifest["seconds_per_expert"]) == 2 and manifest["parameter_count"] > 0
    state = torch.load(buf_dir / "expert_000.pt", weights_only=True)
    assert state["trajectory"].shape == (4, manifest["parameter_count"])
    assert not torch.equal(state["trajectory"][0], state["trajectory"][-1])
    assert not torch.equal(a.load(0), a.load(1))  # independently initialised experts
    # snapshot 0 is the initialisation the expert's own generator gives
    from smallset.models import seeded_model
    init = seeded_model("convnet-s", 1, 3, (8, 8), ctx().generator(_experts.EXPERT_OFFSET), **MODEL_KW)
    assert torch.equal(state["trajectory"][0], torch.cat([p.detach().flatten() for p in init.parameters()]))
    # a recipe field misses; more experts trains only the missing one; the seed and the model miss
    make(expert_lr=0.02).prepare(ds, ctx())
    assert trained == [0, 1, 0, 1]
    c = make(num_experts=3).prepare(ds, ctx()).value
    assert trained == [0, 1, 0, 1, 2] and c.path == a.path and torch.equal(c.load(0), a.load(0))
    make().prepare(ds, ctx(seed=1))
    assert trained[-2:] == [0, 1] and len(trained) == 7
    make(expert_dsa=False).prepare(ds, ctx())
    assert len(trained) == 9
    assert len(list(d.iterdir())) == 4


def test_reduce_uses_the_handed_buffer_and_rebuilds_a_deleted_one(ds, monkeypatch):
    import shutil

    trained = count_trainings(monkeypatch)
    m = make()
    state = m.prepare(ds, ctx())
    buf = state.value
    out = m.reduce(ds, 2, ctx(), state)
    assert trained == [0, 1]
    info = out.info
    assert isinstance(info["learned_lr"], float) and info["expert_manifest"]["experts_used"] == 2
    assert info["expert_manifest"]["key_hash"] == buf.key_hash and info["expert_seconds"] > 0
    shutil.rmtree(buf.path)  # the cache was cleaned behind the pipeline's back
    again = make().reduce(ds, 2, ctx(), state)
    assert trained == [0, 1, 0, 1] and again.dataset.same_content(out.dataset)


class _Crash(Exception):
    pass


class NotATensor:
    """Pickled as an object: a weights_only load must refuse it."""


def test_expert_phase_resumes_after_a_crash(ds, tmp_path, monkeypatch):
    """Killed after expert 0 and in the middle of expert 1: the rerun reuses expert 0, continues expert 1
    from its last finished epoch, and every file equals an uninterrupted run's."""
    monkeypatch.setenv(_experts.CACHE_ENV, str(tmp_path / "straight"))
    straight = make(num_experts=3).prepare(ds, ctx()).value

    monkeypatch.setenv(_experts.CACHE_ENV, str(tmp_path / "crashed"))
    real_epoch = _experts._Expert.epoch
    calls = {"n": 0}

    def crashing_epoch(self, x, y):
        calls["n"] += 1
        if calls["n"] == 3 + 2:  # expert 0 (3 epochs) done, expert 1 crashes in its second epoch
            raise _Crash
        return real_epoch(self, x, y)

    monkeypatch.setattr(_experts._Expert, "epoch", crashing_epoch)
    with pytest.raises(_Crash):
        make(num_experts=3).prepare(ds, ctx())
    monkeypatch.setattr(_experts._Expert, "epoch", real_epoch)
    d = tmp_path / "crashed" / "experts"
    (buf_dir,) = list(d.iterdir())
    assert (buf_dir / "expert_000.pt").is_file() and not (buf_dir / "expert_001.pt").exists()
    assert sorted(p.name for p in (buf_dir / "expert_001.part").iterdir()) == ["epoch_0000.pt", "epoch_0001.pt"]
    assert json.loads((buf_dir / "manifest.json").read_text())["experts_done"] == 1

    trained = count_trainings(monkeypatch)
    epochs = []
    monkeypatch.setattr(_experts._Expert, "epoch", lambda self, x, y: epochs.append(1) or real_epoch(self, x, y))
    resumed = make(num_experts=3).prepare(ds, ctx()).value
    assert trained == [1, 2] and len(epochs) == 2 + 3  # expert 1: epochs 2 and 3 only; expert 2: all three
    assert not (buf_dir / "expert_001.part").exists()
    for i in range(3):
        assert torch.equal(resumed.load(i), straight.load(i)), i
        a = torch.load(buf_dir / f"expert_{i:03d}.pt", weights_only=True)
        b = torch.load(tmp_path / "straight" / "experts" / buf_dir.name / f"expert_{i:03d}.pt", weights_only=True)
        assert torch.equal(a["train_loss"], b["train_loss"]) and torch.equal(a["train_accuracy"], b["train_accuracy"])
    assert resumed.manifest["experts_done"] == 3


def test_an_unsafe_or_wrong_expert_file_is_refused(ds):
    buf = make().prepare(ds, ctx()).value
    torch.save({"trajectory": torch.zeros(2, 3)}, buf.file(1))
    with pytest.raises(SmallsetError, match="expected trajectory"):
        buf.load(1)

    torch.save({"trajectory": NotATensor()}, buf.file(1))
    with pytest.raises(SmallsetError, match="cannot be read safely"):
        buf.load(1)


# --- distillation -----------------------------------------------------------------------------------------
def test_distillation_resume_restores_the_learned_step_size(ds, tmp_path):
    cfg = MTTCondenser.config_for_ipc(2, **{**SMALL, "iterations": 6})
    straight, resumed = straight_and_resumed(MTTCondenser, cfg, ds, 2, lambda **kw: ctx(4, **kw), tmp_path / "ck", 3)
    assert resumed.info["resumed_from"] == 3
    assert torch.equal(resumed.images, straight.images)
    assert resumed.info["learned_lr"] == straight.info["learned_lr"] != cfg.lr_teacher
    assert resumed.info["syn_lr_curve"] == straight.info["syn_lr_curve"]
    assert resumed.info["start_epoch_curve"] == straight.info["start_epoch_curve"]
    state = torch.load(tmp_path / "ck" / "checkpoint.pt", weights_only=True)["state"]
    assert float(state["syn_lr"]) == straight.info["syn_lr_curve"][2]
    assert state["opt_lr"]["state"][0]["momentum_buffer"] is not None  # α's momentum is checkpointed too
    assert len(state["lr_curve"]) == 3


def test_learned_lr_moves_and_the_paper_recipe_uses_it(ds):
    out = make(iterations=5).condense(ds, 2, ctx())
    lr = out.info["learned_lr"]
    assert isinstance(lr, float) and lr != 0.01 and out.info["syn_lr_curve"][-1] == lr
    recipe = make().paper_recipe(None, 1, {"learned_lr": lr})
    assert recipe.lr == lr and recipe.epochs == 1000 and recipe.momentum == 0.9
    assert recipe.augment.startswith("dsa")
    assert make().paper_recipe(None, 1, {"learned_lr": -1.0}).lr == 0.01


def test_the_trajectory_loss_falls(ds):
    out = make(iterations=30, num_experts=1, lr_img=100.0, lr_lr=0.0, dsa=False, max_start_epoch=1).condense(ds, 2,
                                                                                                             ctx())
    curve = out.info["loss_curve"]
    assert sum(curve[-5:]) < 0.8 * sum(curve[:5])


def test_same_seed_same_result_other_seed_differs(ds):
    a = make().condense(ds, 2, ctx(seed=1)).images
    b = make().condense(ds, 2, ctx(seed=1)).images
    c = make().condense(ds, 2, ctx(seed=2)).images
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bad_settings_raise(ds):
    with pytest.raises(SmallsetError, match="max_start_epoch") as e:
        make(train_epochs=3, max_start_epoch=3, expert_epochs=2).condense(ds, 2, ctx())
    assert e.value.option == "max_start_epoch"
    with pytest.raises(SmallsetError, match="min_start_epoch"):
        make(min_start_epoch=3).condense(ds, 2, ctx())
    for field, value in (("syn_steps", 0), ("batch_syn", -1), ("lr_img", 0.0), ("num_experts", 0),
                         ("expert_batch", 0), ("lr_lr", -1.0)):
        with pytest.raises(SmallsetError) as e:
            make(**{field: value}).condense(ds, 2, ctx())
        assert e.value.option == field
    with pytest.raises(SmallsetError, match="DSA"):
        make(dsa_strategy="crop_blur").prepare(ds, ctx())
    with pytest.raises(SmallsetError, match="diverged.*lr_img.*lr_lr"):
        make(lr_img=1e30, iterations=4).condense(ds, 2, ctx())


# --- memory -------------------------------------------------------------------------------------------
def test_extra_memory_grows_with_syn_steps_and_batch_syn(ds):
    def mem(**kw):
        return make(**kw).extra_memory_bytes(ds, 2, ctx())

    assert mem(syn_steps=30) - mem(syn_steps=20) == pytest.approx(mem(syn_steps=20) - mem(syn_steps=10), rel=1e-6)
    assert mem(syn_steps=20) > 1.8 * mem(syn_steps=10)
    per_image = mem(syn_steps=20, batch_syn=4) - mem(syn_steps=20, batch_syn=3)
    assert per_image > 0 and mem(syn_steps=20, batch_syn=6) - mem(syn_steps=20, batch_syn=4) == \
        pytest.approx(2 * per_image, rel=1e-6)
    assert mem(batch_syn=0) == mem(batch_syn=6) == mem(batch_syn=60)  # 0 and anything above = the whole set


def test_cpu_estimate_adds_the_heap_retention_to_the_graph(ds):
    """On the CPU a whole run's peak is ~1.4 × the graph (glibc keeps freed blocks): the estimate must say so."""
    from smallset.distill.mtt import CPU_HEAP_RETENTION

    m = make(syn_steps=7)
    graph = m.graph_bytes(ds, 2, ctx())
    assert graph > 0 and CPU_HEAP_RETENTION >= 1.4
    assert m.extra_memory_bytes(ds, 2, ctx()) == int(graph * CPU_HEAP_RETENTION)
    assert m.extra_memory_bytes(ds, 2, ctx(device=torch.device("cuda"))) == graph  # unmeasured there: the graph


def test_preflight_refuses_an_unrolled_graph_that_cannot_fit_naming_syn_steps(ds, monkeypatch):
    from smallset import estimate
    from smallset.options import RunOptions
    from smallset.tasks import steps
    from smallset.tasks.spec import Budget, resolve_cell

    cell = resolve_cell("mtt", Budget(ipc=2), RunOptions(model="convnet-s", model_kwargs=MODEL_KW, device="cpu"),
                        {"syn_steps": 200})
    made = []
    real = estimate.estimate_training
    monkeypatch.setattr(estimate, "estimate_training", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    steps.preflight(cell, ds, "full-data evaluation")  # without a budget: no method share
    assert made[-1].extra_bytes == 0
    steps.preflight(cell, ds, "mtt ipc=2", 2)  # plenty of memory: see what it estimates
    own = cell.method_instance().extra_memory_bytes(ds, 2, steps.context_for(cell, None))
    assert made[-1].extra_bytes == own > 0
    # the rest fits, the unrolled graph does not
    monkeypatch.setattr(estimate, "available_bytes", lambda device: made[-1].peak_bytes - own // 2)
    with pytest.raises(SmallsetError, match="lower syn_steps or batch_syn") as e:
        steps.preflight(cell, ds, "mtt ipc=2", 2)
    assert e.value.option == "syn_steps"
    cell.options.force = True
    steps.preflight(cell, ds, "mtt ipc=2", 2)


def test_an_unwritable_cache_is_one_sentence(ds, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv(_experts.CACHE_ENV, str(blocker))
    with pytest.raises(SmallsetError, match="SMALLSET_CACHE to a writable directory"):
        make().prepare(ds, ctx())
