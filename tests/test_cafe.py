"""CAFE (docs/methods/cafe.md): stop rules on scripted accuracies (incl. the accumulator quirk), the batched losses
against a per-class loop, the loop wiring, any class/channel/size count, learning on tiny data."""
import pytest
import torch
import torch.nn.functional as F

from smallset.context import RunContext
from smallset.data import ImageDataset
from smallset.errors import SmallsetError
from smallset.distill.base import CONDENSERS
from smallset.distill.cafe import CAFEConfig, LoopWatcher, class_means, halved_lr


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def small_ctx(**kw):
    return RunContext(seed=0, model="convnet-s", model_kwargs={"width": 8}, **kw)


def feed(watcher, values):
    """Number of probes after which the watcher stops (None if it never does)."""
    for i, v in enumerate(values, 1):
        if watcher.update(v):
            return i
    return None


# --- stop rules ----------------------------------------------------------------------------------------
def test_outer_rule_stops_when_window_is_stable():
    w = LoopWatcher(0.04, "stable", window=3)
    # [0.1, 0.5, 0.52] spans 0.42 → keep going; [0.5, 0.52, 0.53] spans 0.03 < 0.04 → stop at probe 4.
    assert feed(w, [0.1, 0.5, 0.52, 0.53, 0.53]) == 4 and w.reason == "threshold"


def test_outer_rule_with_accumulator_quirk():
    # carry 0.1 (10 classes): values 0.1, 0.51, 0.571, 0.5871, 0.58871 → windows span 0.461, 0.0771, 0.01771.
    w = LoopWatcher(0.04, "stable", window=3, carry=0.1)
    assert feed(w, [0.1, 0.5, 0.52, 0.53, 0.53, 0.53]) == 5
    assert w.history == pytest.approx([0.571, 0.5871, 0.58871])


def test_constant_accuracy_needs_one_more_probe_with_the_quirk():
    """At the default window 10, a constant accuracy 0.5 stops after exactly 10 probes without the
    quirk; with it the values climb 0.5, 0.55, 0.555, … (first window spans 0.0555 > λ1) → 11 probes."""
    assert feed(LoopWatcher(0.04, "stable", window=10), [0.5] * 30) == 10
    w = LoopWatcher(0.04, "stable", window=10, carry=0.1)
    assert feed(w, [0.5] * 30) == 11
    assert w.value == pytest.approx(0.5 * (1 - 0.1 ** 11) / 0.9)


def test_inner_rule_stops_when_window_changed_enough():
    # [0.5, 0.51, 0.52] spans 0.02 → drop 0.5; [0.51, 0.52, 0.55] spans 0.04 > 0.03 → stop at probe 4.
    assert feed(LoopWatcher(0.03, "changed", window=3), [0.5, 0.51, 0.52, 0.55]) == 4
    # With carry ½ (2 classes): 0.5, 0.76, 0.9, 1.0 — the first window already spans 0.4.
    w = LoopWatcher(0.03, "changed", window=3, carry=0.5)
    assert feed(w, [0.5, 0.51, 0.52, 0.55]) == 3
    assert w.history == pytest.approx([0.5, 0.76, 0.9])


def test_caps_end_a_loop_that_never_meets_its_rule():
    w = LoopWatcher(0.03, "changed", window=3, cap=7)
    assert feed(w, [0.5] * 20) == 7 and w.reason == "cap"
    w = LoopWatcher(0.04, "stable", window=3, cap=5)
    assert feed(w, [0.0, 1.0] * 10) == 5 and w.reason == "cap"
    with pytest.raises(SmallsetError):
        LoopWatcher(0.04, "stable", window=1)


def test_loop_wiring_follows_scripted_probes(tiny_dataset):
    """Outer probes 0.1, 0.5, 0.51 and inner probes 0.2, 0.3 | 0.5, 0.51, 0.6 with window 2, no quirk:
    the outer loop takes 3 image steps, the inner loops run 2 then 3 epochs (docs/methods/cafe.md)."""
    ds = tiny_dataset(n_per_class=4, num_classes=2, size=8)
    cfg = CAFEConfig(iterations=1, watch_window=2, accumulator_quirk=False, batch_real=4, probe_per_class=4)
    cafe = CONDENSERS.get("cafe")(cfg)
    script = iter([0.1, 0.2, 0.3, 0.5, 0.5, 0.51, 0.6, 0.51])
    log = []
    orig_setup = cafe.setup

    def setup(*a, **k):
        orig_setup(*a, **k)
        step, probe = cafe._image_step, cafe._probe
        cafe._image_step = lambda net: (log.append("step"), step(net))[1]
        cafe._probe = lambda net: (probe(net), next(script))[1]

    cafe.setup = setup
    out = cafe.condense(ds, 1, small_ctx())
    assert log == ["step"] * 3
    assert out.info["outer_steps"] == [3.0] and out.info["inner_epochs"] == [5.0]
    assert out.info["outer_cap_hits"] == 0.0 and out.info["inner_cap_hits"] == 0.0
    assert next(script, "done") == "done"


def test_lr_halving_schedule():
    ms = [1200, 1600, 1800]
    assert [halved_lr(0.1, it, ms) for it in (0, 1199, 1200, 1599, 1600, 1800, 2000)] == \
        pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.0125, 0.0125])


# --- losses -------------------------------------------------------------------------------------------
def test_class_means_with_unequal_counts():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [10.0, 0.0]])
    y = torch.tensor([1, 0, 1, 1])
    assert torch.allclose(class_means(x, y, 2), torch.tensor([[3.0, 4.0], [16 / 3, 8 / 3]]))


def test_batched_losses_equal_a_per_class_loop(tiny_dataset):
    ds = tiny_dataset(n_per_class=6, num_classes=3, channels=2, size=8)
    ipc = 2
    cafe = CONDENSERS.get("cafe")(CAFEConfig(iterations=1))
    cafe.setup(ds, ipc, small_ctx())
    torch.manual_seed(3)
    net = cafe._new_net()
    x = ds.normalized()
    # Unequal class counts in the real batch (5, 3, 4 images), class-major.
    xr = torch.cat([x[ds.labels == 0][:5], x[ds.labels == 1][:3], x[ds.labels == 2][:4]])
    yr = torch.tensor([0] * 5 + [1] * 3 + [2] * 4)
    cafe.sampler.batch_all = lambda n, g: (xr, yr)
    syn0 = cafe.syn.detach().clone()
    total, align, last, disc = cafe._image_step(net)

    weights = [0.1, 0.1, 1.0, 1.0]
    with torch.no_grad():
        fr, fs = net.layer_outputs(xr), net.layer_outputs(syn0)
        want_align, want_last = 0.0, 0.0
        centres = []
        for c in range(3):
            for w, a, b in zip(weights, fr, fs):
                want_align += w * float(((a[yr == c].mean(0) - b[c * ipc:(c + 1) * ipc].mean(0)) ** 2).sum())
            mr = fr[-1][yr == c].flatten(1).mean(0)
            ms = fs[-1][c * ipc:(c + 1) * ipc].flatten(1).mean(0)
            want_last += float(((mr - ms) ** 2).sum())
            centres.append(ms)
        logits = torch.stack([torch.stack([fr[-1][i].flatten() @ centres[k] for k in range(3)]) for i in range(len(yr))])
        want_disc = float(F.cross_entropy(logits, yr, reduction="sum"))
    assert align == pytest.approx(want_align, rel=1e-4)
    assert last == pytest.approx(want_last, rel=1e-4)
    assert disc == pytest.approx(want_disc, rel=1e-4)
    assert total == pytest.approx(want_align + want_last + 0.01 * want_disc, rel=1e-4)
    assert not torch.equal(cafe.syn.detach(), syn0)  # one image step was taken


# --- runs ---------------------------------------------------------------------------------------------
def test_loss_goes_down_on_tiny_data(tiny_dataset):
    ds = tiny_dataset(n_per_class=10, num_classes=3, size=16)
    cfg = CAFEConfig(iterations=8, batch_real=10, probe_per_class=10, watch_window=2,
                     max_outer_steps=4, max_inner_epochs=4)
    cafe = CONDENSERS.get("cafe")(cfg)
    out = cafe.condense(ds, 2, small_ctx())
    curve = out.info["loss_curve"]
    assert len(curve) == 8 and len(out.info["outer_steps"]) == 8
    assert sum(curve[-3:]) < 0.6 * sum(curve[:3]), curve
    assert out.info["mean_abs_change"] > 0.01
    assert all(2 <= s <= 4 for s in out.info["outer_steps"])


@pytest.mark.parametrize("dsa", [False, True])
def test_any_classes_channels_and_sizes(dsa):
    """5 classes of 3×12×10 images with unequal class sizes (smaller than batch_real)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1, 2, 3, 4] * 4 + [0, 1, 0])
    images = torch.rand(len(labels), 3, 12, 10, generator=g)
    ds = ImageDataset(images, labels, [f"k{i}" for i in range(5)], (0.5,) * 3, (0.25,) * 3)
    cfg = CAFEConfig(iterations=2, watch_window=2, max_outer_steps=2, max_inner_epochs=2, dsa=dsa)
    out = CONDENSERS.get("cafe")(cfg).condense(ds, 3, small_ctx())
    assert out.images.shape == (15, 3, 12, 10)
    assert out.labels.tolist() == [c for c in range(5) for _ in range(3)]
    assert torch.isfinite(out.images).all()


def test_bad_settings_raise(tiny_dataset):
    ds = tiny_dataset(n_per_class=4, num_classes=2, size=8)
    cafe = CONDENSERS.get("cafe")
    with pytest.raises(SmallsetError, match="layer_outputs"):
        cafe(CAFEConfig(iterations=1)).condense(ds, 1, RunContext(model="mlp"))
    for bad in (dict(layer_weights="0.1,1"), dict(layer_weights="a,b"), dict(lr_halving="0.5,2"),
                dict(watch_window=1), dict(init="zeros"), dict(max_outer_steps=0), dict(dsa=True, dsa_strategy="blur")):
        with pytest.raises(SmallsetError):
            cafe(CAFEConfig(iterations=1, **bad)).condense(ds, 1, small_ctx())


def test_loop_caps_below_the_watch_window_are_refused(tiny_dataset):
    """With a cap below the watch window the dynamic stop rule can never fire: refused, naming the option."""
    ds = tiny_dataset(n_per_class=4, num_classes=2, size=8)
    cafe = CONDENSERS.get("cafe")
    for cap in ("max_outer_steps", "max_inner_epochs"):
        with pytest.raises(SmallsetError, match=f"{cap} \\(3\\) is below watch_window \\(10\\)") as e:
            cafe(CAFEConfig(iterations=1, watch_window=10, **{cap: 3})).condense(ds, 1, small_ctx())
        assert e.value.option == cap
    cafe(CAFEConfig(iterations=1, watch_window=3, max_outer_steps=3, max_inner_epochs=3, batch_real=4,
                    probe_per_class=4)).condense(ds, 1, small_ctx())  # at the window: allowed
