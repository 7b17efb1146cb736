"""The result tables: a ± only over at least 3 evaluation runs, and the gain over random at the same number
of images and seeds, computed by hand."""
import pytest

from smallset.tasks.results import format_summary, format_table, summarize


def row(method, n, seed, accs, kind="prune", budget=None, steps=None):
    mean = sum(accs) / len(accs)
    return {"method": method, "kind": kind, "budget": budget or f"n={n}", "n_examples": n, "seed": seed,
            "test_accuracy": mean, "test_accuracy_std": 0.01, "test_accuracies": accs, "eval_runs": len(accs),
            "eval_steps": steps, "selection_seconds": 0.0, "eval_train_seconds": 1.0}


def test_single_run_prints_no_spread():
    table = format_table([row("random", 10, 0, [0.5])])
    line = table.splitlines()[2]
    assert "50.00" in line and "1.00" not in line  # the std column shows "–" for one run
    assert "1.00" in format_table([row("random", 10, 0, [0.5, 0.5, 0.5])]).splitlines()[2]


def test_gain_over_random_by_hand():
    rows = [row("random", 10, 0, [0.50, 0.52, 0.54]), row("random", 10, 1, [0.56, 0.58, 0.60]),
            row("herding", 10, 0, [0.60, 0.62, 0.64]), row("herding", 10, 1, [0.60, 0.60, 0.60]),
            row("dm", 10, 0, [0.70], kind="distill", budget="ipc=1"),
            row("random", 20, 0, [0.9, 0.9, 0.9])]
    summary = {(s["method"], s["n_examples"]): s for s in summarize(rows)}
    herd, rand = summary[("herding", 10)], summary[("random", 10)]
    assert herd["runs"] == 6 and herd["seeds"] == 2
    assert herd["accuracy"] == pytest.approx(0.61) and rand["accuracy"] == pytest.approx(0.55)
    assert herd["gain"] == pytest.approx(0.06)
    # sample stds: herding sqrt(0.0014/5), random sqrt(0.007/5); s.e. of the difference of means
    s_h, s_r = (0.0014 / 5) ** 0.5, (0.007 / 5) ** 0.5
    assert herd["accuracy_std"] == pytest.approx(s_h)
    assert herd["gain_se"] == pytest.approx((s_h ** 2 / 6 + s_r ** 2 / 6) ** 0.5)
    dm = summary[("dm", 10)]  # the same 10 images as random's budget, seed 0 only: gain against seed 0
    assert dm["gain"] == pytest.approx(0.70 - 0.52) and dm["gain_se"] is None and dm["accuracy_std"] is None
    assert rand["gain"] is None and summary[("random", 20)]["gain"] is None
    text = format_summary(list(summary.values()))
    assert "+6.00" in text and "+18.00" in text


def trained_row(method, seed, acc, schedule, budget="fraction=0.1"):
    return {"method": method, "kind": "prune", "budget": budget, "n_examples": 50, "seed": seed,
            "method_test_accuracy": acc, "method_steps": 10, "method_schedule": schedule, "test_accuracy": None}


def test_a_training_time_method_is_judged_only_against_random_steps_on_its_own_schedule():
    """InfoBatch at 150 epochs against random subsets at 10 epochs is no comparison: no gain, not a wrong one."""
    rows = [trained_row("random_steps", 0, 0.60, "A"), trained_row("crest", 0, 0.65, "A"),
            trained_row("infobatch", 0, 0.90, "B")]
    summary = {s["method"]: s for s in summarize(rows)}
    assert summary["crest"]["gain"] == pytest.approx(0.05)
    assert summary["infobatch"]["gain"] is None
    rows.append(trained_row("random_steps", 0, 0.80, "B"))  # the baseline on B's schedule: now it is judged
    summary = {(s["method"], s["accuracy"]): s for s in summarize(rows)}
    assert summary[("infobatch", 0.90)]["gain"] == pytest.approx(0.10)
    assert summary[("crest", 0.65)]["gain"] == pytest.approx(0.05)


def test_logged_gains_pair_the_same_schedule(monkeypatch):
    from smallset.tasks import record

    logged = {}
    monkeypatch.setattr(record.tracking, "log_metrics", lambda run_id, m: logged.__setitem__(run_id, m))
    rows = [dict(trained_row("random_steps", 0, 0.60, "A"), run_id="r"),
            dict(trained_row("crest", 0, 0.65, "A"), run_id="c"),
            dict(trained_row("infobatch", 0, 0.90, "B"), run_id="i")]
    record.log_gains(rows)
    assert logged == {"c": {"gain_over_random": pytest.approx(0.05)}}
    assert "gain_over_random" not in rows[2]
