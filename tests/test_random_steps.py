"""random_steps: CREST's step budget and schedule on fresh random subsets, and compare's use of it."""
import torch

from smallset.context import RunContext
from smallset.prune.crest import CrestConfig, budget_steps
from smallset.prune.random_steps import RandomStepsConfig, RandomStepsSelector
from smallset.tasks.results import summarize
from smallset.tasks.spec import with_training_baseline


def ctx(seed=0, test=None):
    return RunContext(seed=seed, model="mlp", model_kwargs={"width": 16}, test=test)


def test_step_budget_equals_crests_and_every_epoch_is_a_fresh_subset(tiny_dataset, monkeypatch):
    ds = tiny_dataset(n_per_class=10, num_classes=3, size=8)  # N = 30
    cfg = RandomStepsConfig(epochs=3, batch_size=4, warmup_epochs=0, lr_milestones="")
    seen = []
    real_randperm = torch.randperm

    def spy(n, generator=None, **kw):
        out = real_randperm(n, generator=generator, **kw)
        seen.append(out[: int(30 * 0.4)].clone())
        return out

    monkeypatch.setattr(torch, "randperm", spy)
    sel = RandomStepsSelector(cfg).select(ds, 0.4, ctx(test=ds))
    monkeypatch.undo()
    spe, total = budget_steps(30, 0.4, CrestConfig(epochs=3, batch_size=4))
    assert sel.info["steps"] == total == 3 * spe == 9  # floor(0.4·30) = 12 per epoch, ceil(12/4) = 3 steps
    assert sel.info["image_passes"] == 36 and float(sel.weights.sum()) == 36
    assert len(seen) == 3 and not all(torch.equal(seen[0], s) for s in seen[1:])  # a fresh subset every epoch
    expected = torch.bincount(torch.cat(seen), minlength=30).float()
    assert torch.equal(sel.weights, expected[sel.indices])  # weights count how often each example was used
    assert 0.0 <= sel.info["test_accuracy"] <= 1.0


def test_warmup_epoch_zero_trains_nothing(tiny_dataset):
    ds = tiny_dataset(n_per_class=10, num_classes=3, size=8)
    sel = RandomStepsSelector(RandomStepsConfig(epochs=2, batch_size=6, warmup_epochs=1, lr_milestones="")).select(
        ds, 0.5, ctx())
    assert sel.info["steps"] == 2 * 3 and sel.info["image_passes"] == 15  # epoch 0 at LR 0: forward only


def test_compare_adds_the_baseline_with_the_trainers_schedule():
    methods, params = with_training_baseline(["random", "crest"], {"crest": {"epochs": 7, "check_subsets": 1}})
    assert methods == ["random", "crest", "random_steps"] and params["random_steps"] == {"epochs": 7}
    assert with_training_baseline(["random", "dm"], {}) == (["random", "dm"], {})


def test_summary_judges_training_methods_by_their_own_model_against_random_steps():
    def row(method, seed, own, n):
        return {"method": method, "kind": "prune", "budget": "fraction=0.1", "n_examples": n, "seed": seed,
                "test_accuracy": 0.99, "test_accuracies": [0.99], "method_test_accuracy": own, "eval_runs": 1,
                "method_steps": 90}

    rows = [row("crest", 0, 0.60, 700), row("crest", 1, 0.62, 650), row("random_steps", 0, 0.55, 900),
            row("random_steps", 1, 0.57, 880)]
    s = {r["method"]: r for r in summarize(rows)}
    assert s["crest"]["accuracy"] == 0.61 and abs(s["crest"]["gain"] - 0.05) < 1e-12
    assert s["crest"]["judged_by"] == "its own training" and s["crest"]["steps"] == 90


def test_a_trainer_on_another_schedule_than_the_baseline_is_named_before_the_compare_starts():
    from smallset.tasks.spec import schedules_apart

    assert schedules_apart(["crest", "infobatch"], {"crest": {"epochs": 7}, "infobatch": {"epochs": 150}}) == (
        "infobatch trains on another schedule than random_steps (infobatch: epochs 150 vs 7), so no gain over "
        "random is computed for it; give every training-time method the same schedule options to compare them.")
    same = {"crest": {"epochs": 7}, "infobatch": {"epochs": 7, "delta": 0.5}}  # delta is not a schedule field
    assert schedules_apart(["crest", "infobatch"], same) is None
    # compared by the values they train with: a default given explicitly, or as text, is the same schedule
    assert schedules_apart(["crest", "random_steps"], {"random_steps": {"epochs": 200}}) is None
    assert schedules_apart(["crest", "infobatch"], {"crest": {"epochs": "7"}, "infobatch": {"epochs": 7}}) is None
    assert schedules_apart(["random", "dm"], {}) is None


def test_compare_warns_about_it_in_one_line_before_anything_runs(tmp_path, monkeypatch, capsys):
    from smallset.flows import cli

    ran = []
    monkeypatch.setattr(cli, "run_compare", lambda **kw: ran.append(kw) or [])
    monkeypatch.setattr(cli.cli_output, "print_compare", lambda rows: None)
    monkeypatch.chdir(tmp_path)
    code = cli.main(["compare", "--methods", "crest,infobatch", "--fractions", "0.1", "--set", "infobatch.epochs=3",
                     "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0 and len(ran) == 1
    assert err.count("smallset: warning: infobatch trains on another schedule than random_steps") == 1


def test_the_demo_gives_every_training_time_method_the_same_schedule():
    from smallset.prune._training import TrainingSchedule
    from smallset.tasks.methods import all_methods, method_class

    trainers = [n for n in all_methods() if issubclass(method_class(n).config_cls, TrainingSchedule)]
    assert {"crest", "infobatch", "random_steps"} <= set(trainers)
    assert len({repr(sorted(method_class(n).demo.items())) for n in trainers}) == 1
